"""`make_tiny`: a random, deterministic HF checkpoint of the `tiny` preset plus a trained BPE tokenizer.

Design notes
- The tensor list is `expected_tensors(cfg)`, so the checkpoint has the full Super architecture at toy size
  (M, E with LatentMoE + grouped routing, *, one MTP block) and validates by construction.
- Initialisation follows the reference Mamba-2 / NemotronH init (HF `NemotronHPreTrainedModel._init_weights`,
  mamba_ssm `Mamba2.__init__`), per the rule table `_init_rule`:
      linears, embeddings, router        normal(0, initializer_range)
      norms (1-D `.weight`), D            ones
      A_log                               log(uniform(1, 16))
      dt_bias                             softplus^-1(dt), dt = exp(uniform(log dt_min, log dt_max)) >= dt_floor
      conv1d weight / bias                uniform(+-1/sqrt(K))  (torch Conv1d default, fan_in = 1*K)
      e_score_correction_bias             normal(0, 0.01), kept float32
  HF's `rescale_prenorm_residual` (out_proj / sqrt(n_layer)) is not applied: the model is random either way.
- Deterministic for a seed: one torch.Generator consumed in the (fixed) expected-tensor order; the tokenizer
  is trained on fixed text from the Python stdlib (the same Python version gives the same bytes).
- Stored bf16 except the fp32 correction bias, written with `save_checkpoint` (atomic).
"""

from __future__ import annotations

import inspect as pyinspect
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from trtllm_nemotron.checkpoint.writer import save_checkpoint
from trtllm_nemotron.config import NemotronHConfig, TensorSpec, expected_tensors, preset

if TYPE_CHECKING:
    import torch


def tokenizer_corpus() -> list[str]:
    """A few tens of KB of Python source and docstrings from the stdlib (code-like text for a code model)."""
    import json.encoder
    import textwrap

    return [pyinspect.getsource(textwrap), pyinspect.getsource(json.encoder)]


def _init_rule(name: str, spec: TensorSpec) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("A_log", "D", "dt_bias", "e_score_correction_bias"):
        return leaf
    if ".conv1d." in name:
        return "conv"
    if len(spec.shape) == 1:
        return "ones"  # every 1-D .weight is a norm weight
    return "normal"


def random_tensors(cfg: NemotronHConfig, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every expected tensor of `cfg`, deterministically initialised; bf16 but the fp32 bias."""
    import torch

    g = torch.Generator().manual_seed(seed)
    std = cfg.initializer_range
    lo, hi = math.log(cfg.time_step_min), math.log(cfg.time_step_max)
    for name, spec in expected_tensors(cfg).items():
        shape = spec.shape
        rule = _init_rule(name, spec)
        if rule == "normal":
            t = torch.randn(shape, generator=g) * std
        elif rule == "ones" or rule == "D":
            t = torch.ones(shape)
        elif rule == "A_log":
            t = torch.log(torch.empty(shape).uniform_(1.0, 16.0, generator=g))
        elif rule == "dt_bias":
            dt = torch.exp(torch.rand(shape, generator=g) * (hi - lo) + lo).clamp(min=cfg.time_step_floor)
            t = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
        elif rule == "conv":
            bound = 1.0 / math.sqrt(cfg.conv_kernel)
            t = torch.empty(shape).uniform_(-bound, bound, generator=g)
        elif rule == "e_score_correction_bias":
            yield name, (torch.randn(shape, generator=g) * 0.01).float()
            continue
        else:  # pragma: no cover - the rule table is exhaustive
            raise AssertionError(f"no init rule for {name}")
        yield name, t.to(torch.bfloat16)


def make_tiny(out_dir: str | Path, *, seed: int = 0, config: NemotronHConfig | None = None) -> Path:
    """Write a random HF checkpoint of `config` (default `preset("tiny")`) with a BPE tokenizer to `out_dir`."""
    from trtllm_nemotron.tokenizer import train_bpe_tokenizer

    cfg = config if config is not None else preset("tiny")
    out_dir = Path(out_dir)
    out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tok-", dir=out_dir.absolute().parent) as tok_dir:
        train_bpe_tokenizer(tokenizer_corpus(), cfg.vocab_size, tok_dir)
        return save_checkpoint(out_dir, cfg, random_tensors(cfg, seed), tokenizer_dir=tok_dir)
