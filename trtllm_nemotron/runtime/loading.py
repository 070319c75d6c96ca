"""Loading: an engine dir (build.json + checkpoint/) or a plain HF checkpoint dir -> model, tokenizer, EOS
ids and the MTP setting, ready for `Engine`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trtllm_nemotron.errors import CheckpointError, RuntimeStateError
from trtllm_nemotron.runtime.tokenizer import Tokenizer

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if not isinstance(dtype, str):
        return dtype
    if dtype not in DTYPES:
        raise RuntimeStateError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class Loaded:
    model: Any  # NemotronHForCausalLM
    tokenizer: Tokenizer
    eos_token_ids: list[int]  # the config's; the engine adds the tokenizer's (generation_config's too)
    mtp: int  # draft tokens: the caller's, else the engine's build.json, else 3 with MTP layers, else 0


def load(path: str | Path, *, device: str, dtype: torch.dtype | str | None, mtp: int | None) -> Loaded:
    """dtype None: float32 on CPU, bfloat16 on CUDA. mtp None: the engine's MTP setting (build.json
    `mtp.max_draft_len`); for a plain checkpoint with MTP layers, 3 (the build default)."""
    from trtllm_nemotron.model import load_model

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model path {path} does not exist; pass an engine dir or a HF checkpoint dir")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeStateError("device 'cuda' asked for, but no CUDA GPU is visible; use --device cpu")
    dtype = parse_dtype(dtype)
    is_engine = (path / "build.json").is_file()
    ckpt = path / "checkpoint" if is_engine else path
    engine_mtp = None
    if is_engine:
        try:
            manifest = json.loads((path / "build.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path / 'build.json'} is not valid JSON ({e}); rebuild the engine") from e
        m = manifest.get("mtp")
        engine_mtp = int(m.get("max_draft_len") or 0) if isinstance(m, dict) else int(m or 0)
    model = load_model(ckpt, dtype=dtype, device=dev)
    cfg = model.config
    if mtp is None:
        mtp = engine_mtp if engine_mtp is not None else (3 if cfg.num_nextn_predict_layers else 0)
    tok = Tokenizer.from_dir(ckpt, vocab_size=cfg.vocab_size)  # its eos ids include generation_config's
    return Loaded(model, tok, list(cfg.eos_token_ids), mtp)
