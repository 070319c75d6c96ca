"""Tokenizer, chat template and UTF-8-safe incremental detokenization.

- `Tokenizer.from_dir(dir)` reads `tokenizer.json` (the `tokenizers` library, no transformers needed),
  `tokenizer_config.json` (special tokens, `chat_template`) and `chat_template.jinja` when present. A
  checkpoint without a tokenizer (random test checkpoints) gets a byte-level fallback: ids 3..258 are the
  256 bytes, 0/1/2 are `<unk>`/`<s>`/`</s>` (needs vocab_size >= 259); the fallback is logged, never silent.
- The chat template is rendered with jinja2 (sandboxed, as HF does); without a template, ChatML
  (`<|im_start|>role\\ncontent<|im_end|>\\n`, the Nemotron family's format, spec §8).
- `IncrementalDetokenizer` turns a growing list of ids into text deltas that never split a UTF-8 character:
  it decodes a short window twice (without and with the new ids, vLLM's prefix/read offsets) and holds
  back text ending in U+FFFD (an incomplete byte sequence) until the next id completes it.
- `StopStringFilter` withholds any tail that could still become a stop string and cuts the text at the first
  full match, so stop strings never reach the client.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trtllm_nemotron.errors import CheckpointError

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_BYTE_SPECIALS = ("<unk>", "<s>", "</s>")


class Tokenizer:
    """encode / decode / apply_chat_template over a `tokenizers.Tokenizer`."""

    def __init__(
        self,
        tok: Any,
        *,
        chat_template: str | None = None,
        eos_token: str | None = None,
        bos_token: str | None = None,
        byte_fallback: bool = False,
    ) -> None:
        self._tok = tok
        self.chat_template = chat_template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.byte_fallback = byte_fallback

    @classmethod
    def from_dir(cls, path: str | Path, *, vocab_size: int | None = None) -> Tokenizer:
        from tokenizers import Tokenizer as _Tok

        path = Path(path)
        cfg: dict[str, Any] = {}
        if (path / "tokenizer_config.json").is_file():
            try:
                cfg = json.loads((path / "tokenizer_config.json").read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path / 'tokenizer_config.json'} is not valid JSON ({e})") from e
        template = cfg.get("chat_template")
        if isinstance(template, list):  # HF's named-template list form
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        eos, bos = _token_str(cfg.get("eos_token")), _token_str(cfg.get("bos_token"))
        if (path / "tokenizer.json").is_file():
            try:
                tok = _Tok.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise CheckpointError(
                    f"cannot read {path / 'tokenizer.json'}: {e}; re-export the tokenizer"
                ) from e
            return cls(tok, chat_template=template, eos_token=eos, bos_token=bos)
        if vocab_size is not None and vocab_size < 256 + len(_BYTE_SPECIALS):
            raise CheckpointError(
                f"{path} has no tokenizer.json and vocab_size {vocab_size} is too small for the byte-level "
                f"fallback (needs >= {256 + len(_BYTE_SPECIALS)}); add a tokenizer.json to the checkpoint"
            )
        log.warning(
            "no tokenizer.json in %s: using a byte-level fallback tokenizer (ids 3..258 = bytes)", path
        )
        return cls(
            byte_level_tokenizer(),
            chat_template=template,
            eos_token="</s>",
            bos_token="<s>",
            byte_fallback=True,
        )

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=not self.byte_fallback).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def eos_token_ids(self) -> list[int]:
        ids = []
        for t in (self.eos_token, "<|im_end|>"):
            i = self.token_to_id(t) if t else None
            if i is not None:
                ids.append(i)
        return ids

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the checkpoint's template (ChatML if none)."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str) -> None:
            raise CheckpointError(f"chat template error: {msg}")

        env.globals["raise_exception"] = raise_exception
        tmpl = env.from_string(self.chat_template or CHATML_TEMPLATE)
        return tmpl.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )


def _token_str(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def byte_level_tokenizer() -> Any:
    """A `tokenizers` tokenizer mapping every byte to one id (3..258); 0/1/2 are <unk>/<s>/</s>."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet(), key=lambda c: _BYTE_ORDER[c])
    vocab = {s: i for i, s in enumerate(_BYTE_SPECIALS)}
    vocab.update({c: len(_BYTE_SPECIALS) + i for i, c in enumerate(alphabet)})
    tok = _Tok(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_BYTE_SPECIALS))
    return tok


def _gpt2_byte_order() -> dict[str, int]:
    """GPT-2's byte -> printable-char table, inverted: char -> byte value."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_ORDER = _gpt2_byte_order()


class IncrementalDetokenizer:
    """ids in, text deltas out; a delta never ends inside a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an invalid trailing byte sequence shows as U+FFFD)."""
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


class StopStringFilter:
    """Text deltas in, safe deltas out; `matched` turns True at the first full stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""  # everything received
        self.emitted = 0  # chars of self.text already returned
        self.matched = False

    def push(self, delta: str) -> str:
        if self.matched:
            return ""
        self.text += delta
        if not self.stops:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out
        longest = max(len(s) for s in self.stops)
        start = max(0, self.emitted - longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            self.matched = True
            out = self.text[self.emitted : cut]
            self.text = self.text[:cut]
            self.emitted = cut
            return out
        hold = 0  # longest tail of text that is a proper prefix of a stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        end = max(self.emitted, len(self.text) - hold)
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out
