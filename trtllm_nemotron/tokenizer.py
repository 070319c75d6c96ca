"""Byte-level BPE tokenizers in Nemotron's layout, and a light loader that needs no transformers.

Design notes
- `train_bpe_tokenizer` trains a byte-level BPE with the `tokenizers` library and saves it in HF format
  (`tokenizer.json`, `tokenizer_config.json` with the chat template, `special_tokens_map.json`), loadable by
  `transformers.AutoTokenizer` and by `tokenizers.Tokenizer.from_file`.
- Special-token layout follows Nemotron (spec nemotron_h.md §8): `<unk>`=0, `<s>`=1 (bos), `</s>`=2,
  `<|im_end|>`=11 (chat eos), `<think>`=12 [V-3p]. Ids 3..9 are `<SPECIAL_i>` placeholders and
  `<|im_start|>`=10, `</think>`=13 are our choice [Inf], so the documented ids hold at any vocabulary size.
- Chat template: ChatML with reasoning, as Nemotron 3: with `enable_thinking` (default True) the generation
  prompt is `<|im_start|>assistant\\n<think>\\n`; with `enable_thinking=False` it is prefilled with
  `<think></think>`.
- `load_tokenizer` returns `TextTokenizer`, which renders the chat template with jinja2 directly (the same
  sandboxed environment options as transformers), so the runtime and the Triton model import no transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trtllm_nemotron.errors import ConfigError

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

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{- '<think></think>' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}"
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


class TextTokenizer:
    """encode / decode / chat template over a HF `tokenizer.json`, without transformers."""

    def __init__(self, tokenizer: Any, config: dict[str, Any], extra_eos_ids: Iterable[int] = ()):
        self._tok = tokenizer
        self.config = config
        self.chat_template: str | None = config.get("chat_template")
        self.bos_token = _content(config.get("bos_token"))
        self.eos_token = _content(config.get("eos_token"))
        ids: list[int] = []
        for t in (self.eos_token, EOS):
            tid = tokenizer.token_to_id(t) if t else None
            if tid is not None and tid not in ids:
                ids.append(tid)
        for tid in extra_eos_ids:
            if tid not in ids:
                ids.append(int(tid))
        self.eos_token_ids: list[int] = ids
        self.eos_token_id: int | None = tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        self.bos_token_id: int | None = tokenizer.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render the chat template (as transformers does: sandboxed jinja2, trim_blocks, lstrip_blocks)."""
        if not self.chat_template:
            raise ConfigError(
                "this tokenizer has no chat_template in tokenizer_config.json; pass plain text instead"
            )
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise ConfigError(f"chat template error: {message}")

        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )


def _content(tok: Any) -> str | None:
    return tok.get("content") if isinstance(tok, dict) else tok


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load `tokenizer.json` + `tokenizer_config.json` (+ generation_config.json eos ids) from a directory."""
    from tokenizers import Tokenizer

    d = Path(path)
    tj = d / "tokenizer.json"
    if not tj.is_file():
        raise ConfigError(f"no tokenizer.json in {d}; pass a directory holding a HF fast tokenizer")
    try:
        tok = Tokenizer.from_file(str(tj))
    except Exception as e:  # tokenizers raises a plain Exception on malformed files
        raise ConfigError(f"{tj} is not a valid tokenizers file ({e}); re-download or re-train it") from e
    cfg: dict[str, Any] = {}
    tc = d / "tokenizer_config.json"
    if tc.is_file():
        try:
            cfg = json.loads(tc.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{tc} is not valid JSON ({e})") from e
    if not cfg.get("chat_template") and (d / "chat_template.jinja").is_file():
        cfg["chat_template"] = (d / "chat_template.jinja").read_text()
    extra: list[int] = []
    gc = d / "generation_config.json"
    if gc.is_file():
        e = json.loads(gc.read_text()).get("eos_token_id")
        extra = [] if e is None else ([e] if isinstance(e, int) else list(e))
    return TextTokenizer(tok, cfg, extra)
