"""Nemotron's tokenizer: training a byte-level BPE in its layout, and the one wrapper every part of the package
uses (training, evaluation, the runtime, the Triton model), which needs no transformers.

Design notes
- `train_bpe_tokenizer` trains a byte-level BPE with the `tokenizers` library and saves it in HF format
  (`tokenizer.json`, `tokenizer_config.json` with the chat template, `special_tokens_map.json`), loadable by
  `transformers.AutoTokenizer` and by `tokenizers.Tokenizer.from_file`.
- Special-token layout follows Nemotron (spec nemotron_h.md §8): `<unk>`=0, `<s>`=1 (bos), `</s>`=2,
  `<|im_end|>`=11 (chat eos), `<think>`=12 [V-3p]. Ids 3..9 are `<SPECIAL_i>` placeholders and
  `<|im_start|>`=10, `</think>`=13 are our choice [Inf], so the documented ids hold at any vocabulary size.
- One chat template, `CHATML_TEMPLATE`: ChatML with reasoning, tools and tool calls, in Nemotron 3's shape:
  with `enable_thinking` (default True) the generation prompt is `<|im_start|>assistant\n<think>\n`; with
  `enable_thinking=False` it is prefilled with `<think></think>`; `tools` are listed in the system turn with
  the `<tool_call><function=...><parameter=...>` format the OpenAI front parses (see the template's comment).
  It is written into trained tokenizers (and the shipped model's) and used for a checkpoint that has none.
- `Tokenizer.from_dir` / `load_tokenizer` return `Tokenizer`, which renders the chat template with jinja2
  directly (the same sandboxed environment options as transformers), so the runtime and the Triton model
  import no transformers. A checkpoint without `tokenizer.json` gets a byte-level fallback (`from_dir` only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trtllm_nemotron.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
IM_START, IM_END, THINK, END_THINK = "<|im_start|>", "<|im_end|>", "<think>", "</think>"
SPECIAL_TOKENS: tuple[str, ...] = (
    UNK,
    BOS,
    EOS,
    *(f"<SPECIAL_{i}>" for i in range(3, 10)),
    IM_START,
    IM_END,
    THINK,
    END_THINK,
)
_BYTE_SPECIALS = (UNK, BOS, EOS)

CHATML_TEMPLATE = (
    # Nemotron 3's chat format (spec openai_serving.md §6), written for this package: a system turn always
    # (empty when the conversation has none) that lists `tools` and the call format; assistant turns as
    # `<think>\nREASONING\n</think>\nCONTENT` (`<think></think>CONTENT` without reasoning; reasoning of turns
    # before the last user turn dropped while `truncate_history_thinking`, default true); tool calls as
    # `<tool_call>` blocks; consecutive `tool` results in one user turn as `<tool_response>` blocks; the
    # generation prompt opens `<think>\n` unless `enable_thinking` is false (then `<think></think>`).
    "{%- set thinking = enable_thinking if enable_thinking is defined else true %}"
    "{%- set truncate = truncate_history_thinking if truncate_history_thinking is defined else true %}"
    "{%- set tool_list = tools if tools is defined and tools else [] %}"
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set system_text = messages[0]['content'] or '' %}{%- set first = 1 %}"
    "{%- else %}{%- set system_text = '' %}{%- set first = 0 %}{%- endif %}"
    "{{- '<|im_start|>system\\n' + system_text }}"
    "{%- if tool_list %}"
    "{%- if system_text %}{{- '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou have access to the following functions:\\n\\n<tools>' }}"
    "{%- for t in tool_list %}{%- set f = t['function'] if t['function'] is defined else t %}"
    "{{- '\\n<function>\\n<name>' ~ f['name'] ~ '</name>' }}"
    "{%- if f['description'] is defined and f['description'] %}"
    "{{- '\\n<description>' ~ (f['description'] | trim) ~ '</description>' }}{%- endif %}"
    "{{- '\\n<parameters>' }}"
    "{%- set params = f['parameters'] if f['parameters'] is defined and f['parameters'] is mapping else {} %}"
    "{%- if params['properties'] is defined and params['properties'] is mapping %}"
    "{%- for pname, p in params['properties'] | items %}"
    "{{- '\\n<parameter>\\n<name>' ~ pname ~ '</name>' }}"
    "{%- if p['type'] is defined %}{{- '\\n<type>' ~ (p['type'] | string) ~ '</type>' }}{%- endif %}"
    "{%- if p['description'] is defined %}"
    "{{- '\\n<description>' ~ (p['description'] | trim) ~ '</description>' }}{%- endif %}"
    "{%- if p['enum'] is defined %}{{- '\\n<enum>' ~ (p['enum'] | tojson) ~ '</enum>' }}{%- endif %}"
    "{{- '\\n</parameter>' }}"
    "{%- endfor %}{%- endif %}"
    "{%- if params['required'] is defined %}{{- '\\n<required>' ~ (params['required'] | tojson) ~ '</required>' }}"
    "{%- endif %}"
    "{{- '\\n</parameters>\\n</function>' }}"
    "{%- endfor %}"
    "{{- '\\n</tools>\\n\\nTo call a function, answer ONLY with a block in this format, and write nothing after it:'"
    " ~ '\\n\\n<tool_call>\\n<function=example_function_name>\\n<parameter=example_parameter_1>\\nvalue_1\\n'"
    " ~ '</parameter>\\n<parameter=example_parameter_2>\\nA value for the second parameter\\nover several lines\\n'"
    " ~ '</parameter>\\n</function>\\n</tool_call>\\n\\n<IMPORTANT>\\nRemember:\\n'"
    " ~ '- Nest one <function=...></function> block inside <tool_call></tool_call> tags\\n'"
    " ~ '- Give every required parameter\\n'"
    " ~ '- Any reasoning about the call goes BEFORE it, never after\\n'"
    " ~ '- When no function fits, answer normally and do not mention the functions\\n</IMPORTANT>' }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- for m in messages[first:] %}{%- set i = loop.index0 + first %}"
    "{%- if m['role'] == 'assistant' %}"
    "{%- set text = m['content'] or '' %}"
    "{%- if m['reasoning_content'] is defined and m['reasoning_content'] and (m['reasoning_content'] | trim) %}"
    "{%- set text = '<think>\\n' ~ m['reasoning_content'] ~ '\\n</think>\\n' ~ text %}"
    "{%- elif '<think>' not in text and '</think>' not in text %}{%- set text = '<think></think>' ~ text %}"
    "{%- endif %}"
    "{%- if truncate and i < ns.last_user and '</think>' in text %}"
    "{%- set text = '<think></think>' ~ text.split('</think>')[-1] | trim %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if m['tool_calls'] is defined and m['tool_calls'] %}"
    "{{- (text | trim) ~ '\\n' }}"
    "{%- for c in m['tool_calls'] %}{%- set c = c['function'] if c['function'] is defined else c %}"
    "{{- '<tool_call>\\n<function=' ~ c['name'] ~ '>\\n' }}"
    "{%- set args = c['arguments'] if c['arguments'] is defined and c['arguments'] is mapping else {} %}"
    "{%- for k, v in args | items %}"
    "{{- '<parameter=' ~ k ~ '>\\n' ~ ((v | tojson) if v is mapping or (v is sequence and v is not string)"
    " else (v | string)) ~ '\\n</parameter>\\n' }}"
    "{%- endfor %}"
    "{{- '</function>\\n</tool_call>\\n' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- (text | trim) ~ '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif m['role'] == 'tool' %}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' %}{{- '<|im_start|>user\\n' }}{%- endif %}"
    "{{- '<tool_response>\\n' ~ (m['content'] or '') ~ '\\n</tool_response>\\n' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' ~ ('<think>\\n' if thinking else '<think></think>') }}"
    "{%- endif %}"
)


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path,
    *,
    chat_template: str = CHATML_TEMPLATE,
    model_max_length: int = 262144,
) -> Path:
    """Train a byte-level BPE of `vocab_size` ids (specials included) on `texts` and save it in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    min_vocab = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_vocab:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE with Nemotron's {len(SPECIAL_TOKENS)} special "
            f"tokens needs at least {min_vocab}"
        )
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=2,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, f"special token {s}: expected id {i}, got {tok.token_to_id(s)}"

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": IM_END,
        "unk_token": UNK,
        "pad_token": UNK,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": added,
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    special_map = {"bos_token": BOS, "eos_token": IM_END, "unk_token": UNK, "pad_token": UNK}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return out


class Tokenizer:
    """encode / decode / chat template over a `tokenizers.Tokenizer` (a HF `tokenizer.json`), no transformers.

    Built by `Tokenizer.from_dir` (or `load_tokenizer`, which refuses a dir without `tokenizer.json`).
    `chat_template` is the checkpoint's; without one, `CHATML_TEMPLATE` (Nemotron 3's shape).
    """

    def __init__(
        self,
        tok: Any,
        *,
        chat_template: str | None = None,
        eos_token: str | None = None,
        bos_token: str | None = None,
        byte_fallback: bool = False,
        extra_eos_ids: Iterable[int] = (),
    ) -> None:
        self._tok = tok
        self.chat_template = chat_template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.byte_fallback = byte_fallback
        self.extra_eos_ids = [int(i) for i in extra_eos_ids]

    @classmethod
    def from_dir(cls, path: str | Path, *, vocab_size: int | None = None) -> Tokenizer:
        """Read `tokenizer.json`, `tokenizer_config.json` (special tokens, `chat_template`; HF's named-template
        list form too), `chat_template.jinja` (wins over the config's, as in transformers) and
        `generation_config.json`'s eos ids. Without `tokenizer.json` (random test checkpoints): a byte-level
        fallback -- ids 3..258 are the 256 bytes, 0/1/2 are `<unk>`/`<s>`/`</s>`, so `vocab_size` must be at
        least 259 -- logged, never silent."""
        from tokenizers import Tokenizer as _Tok

        path = Path(path)
        cfg = _read_json(path / "tokenizer_config.json")
        template = cfg.get("chat_template")
        if isinstance(template, list):  # HF's named-template list form
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        gen = _read_json(path / "generation_config.json").get("eos_token_id")
        if not (
            gen is None
            or isinstance(gen, int)
            or (isinstance(gen, list) and all(isinstance(i, int) for i in gen))
        ):
            raise CheckpointError(
                f"{path / 'generation_config.json'}: eos_token_id must be an int or a list of ints"
            )
        extra = [] if gen is None else ([gen] if isinstance(gen, int) else gen)
        eos, bos = _content(cfg.get("eos_token")), _content(cfg.get("bos_token"))
        if (path / "tokenizer.json").is_file():
            try:
                tok = _Tok.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # tokenizers raises a bare Exception on malformed files
                raise CheckpointError(
                    f"cannot read {path / 'tokenizer.json'}: {e}; re-export (or re-train) the tokenizer"
                ) from e
            return cls(tok, chat_template=template, eos_token=eos, bos_token=bos, extra_eos_ids=extra)
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
            eos_token=EOS,
            bos_token=BOS,
            byte_fallback=True,
            extra_eos_ids=extra,
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. a BOS), as
        transformers' `encode` does."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_of(self, token: str) -> int:
        """The id of `token`, which the tokenizer must have (CheckpointError otherwise)."""
        i = self._tok.token_to_id(token)
        if i is None:
            raise CheckpointError(f"the tokenizer has no {token!r} token; use one in Nemotron's layout")
        return i

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    def eos_token_ids(self) -> list[int]:
        """Every id that ends a generation: the eos token, `<|im_end|>`, `</s>`, then generation_config's."""
        ids: list[int] = []
        for t in (self.eos_token, IM_END, EOS):
            i = self.token_to_id(t) if t else None
            if i is not None and i not in ids:
                ids.append(i)
        ids += [i for i in self.extra_eos_ids if i not in ids]
        return ids

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the checkpoint's template (`CHATML_TEMPLATE` if
        none), as transformers does: sandboxed jinja2, trim_blocks, lstrip_blocks; `kwargs` (e.g.
        `enable_thinking=False`) reach the template."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise CheckpointError(f"chat template error: {message}")

        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template or CHATML_TEMPLATE).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """`Tokenizer.from_dir` for a dir that must hold a `tokenizer.json` (no byte-level fallback)."""
    if not (Path(path) / "tokenizer.json").is_file():
        raise CheckpointError(f"no tokenizer.json in {path}; pass a directory holding a HF fast tokenizer")
    return Tokenizer.from_dir(path)


def _content(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-export the tokenizer") from e


def byte_level_tokenizer() -> Any:
    """A `tokenizers` tokenizer mapping every byte to one id (3..258); 0/1/2 are <unk>/<s>/</s>."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet(), key=lambda c: _BYTE_ORDER[c])
    vocab = {s: i for i, s in enumerate(_BYTE_SPECIALS)}
    vocab.update({c: len(_BYTE_SPECIALS) + i for i, c in enumerate(alphabet)})
    tok = _Tok(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
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
