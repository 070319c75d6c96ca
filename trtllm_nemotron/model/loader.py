"""Build the reference network from a checkpoint or a config.

- `load_model(path, ...)`: a HF-format checkpoint dir (ours, HF `save_pretrained`'s, or an engine dir with a
  `checkpoint/` subdir), BF16 / FP8 / NVFP4. Tensors come from `trtllm_nemotron.checkpoint.open_checkpoint`
  (canonical names; fused 3-D experts already split), or for a quantized checkpoint from
  `trtllm_nemotron.checkpoint.dequant.dequantized_tensors` (the weights decoded to `dtype`). The model is built
  on the meta device and then materialised on `device`, so weights are held once. (To also simulate the
  deployed engine's activation quantization: `trtllm_nemotron.quant.loading.load_model_as_deployed`.)
- `model_from_config(cfg, seed)`: random init, identical to what `make-tiny` writes for the same seed.
- `build_model_skeleton(cfg)`: on the meta device, for layer-streaming users.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.errors import CheckpointError
from trtllm_nemotron.model.mamba import ClampMode
from trtllm_nemotron.model.moe import RoutedExperts
from trtllm_nemotron.model.network import NemotronHForCausalLM


def build_model_skeleton(
    cfg: NemotronHConfig,
    *,
    clamp_dt_min: ClampMode = False,
    dtype: torch.dtype | None = None,
    moe_routed: RoutedExperts | None = None,
) -> NemotronHForCausalLM:
    """The network with every parameter on the meta device (no memory)."""
    with torch.device("meta"):
        model = NemotronHForCausalLM(cfg, clamp_dt_min=clamp_dt_min, moe_routed=moe_routed)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def model_from_config(
    cfg: NemotronHConfig,
    seed: int | None = None,
    *,
    clamp_dt_min: ClampMode = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    moe_routed: RoutedExperts | None = None,
) -> NemotronHForCausalLM:
    """A randomly initialised network, tensor for tensor what `make_tiny(out, seed=seed, config=cfg)` writes
    (`checkpoint.tiny.random_tensors`: normal(0, initializer_range) matrices, ones for norms and D, A_log =
    log U(1, 16), dt_bias = softplus^-1 of log-uniform dt, uniform conv, small fp32 correction bias; the
    values are bf16-rounded like the checkpoint). seed None draws a random seed. `moe_routed`: the MoE
    routed-experts sum (None: the reference; training passes `train.fast.routed_experts_sorted`)."""
    from trtllm_nemotron.checkpoint.tiny import random_tensors

    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    model = build_model_skeleton(cfg, clamp_dt_min=clamp_dt_min, dtype=dtype, moe_routed=moe_routed)
    model.to_empty(device=device)
    _copy_in(model, random_tensors(cfg, seed), strict=True, where=f"random init of {cfg.pattern}")
    return model.train(False)


def _targets(model: nn.Module) -> dict[str, torch.Tensor]:
    t: dict[str, torch.Tensor] = dict(model.named_parameters())
    t.update(model.named_buffers())
    return t


@torch.no_grad()
def _copy_in(
    model: nn.Module,
    items: Iterable[tuple[str, torch.Tensor]],
    *,
    strict: bool,
    where: object,
    progress: bool = False,
    total: int | None = None,
) -> list[str]:
    """Copy (name, tensor) into the model's parameters/buffers; returns the names not provided."""
    from tqdm import tqdm

    targets = _targets(model)
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, t in tqdm(
        items, total=total, desc="load", unit="tensor", disable=not progress, file=sys.stderr
    ):
        dst = targets.get(name)
        if dst is None:
            unexpected.append(name)
            continue
        if tuple(t.shape) != tuple(dst.shape):
            if dst.dim() == 3 and t.dim() == 2 and t.numel() == dst.numel():  # conv1d stored squeezed [C, K]
                t = t.reshape(dst.shape)
            else:
                raise CheckpointError(
                    f"tensor {name} in {where} has shape {tuple(t.shape)}, expected {tuple(dst.shape)} from "
                    "config.json; the checkpoint and its config disagree"
                )
        dst.copy_(t.to(dst.device))
        loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{where} does not match its config: {len(missing)} missing "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, {len(unexpected)} unexpected "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}; re-export it or pass strict=False"
        )
    return missing


def resolve_checkpoint_dir(path: Any) -> Path:
    """`path`, or its `checkpoint/` subdir when `path` is an engine dir."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint path {p} does not exist; pass a HF checkpoint dir or an engine dir"
        )
    if p.is_dir() and not (p / "config.json").exists() and (p / "checkpoint" / "config.json").exists():
        return p / "checkpoint"  # an engine dir
    return p


def load_model(
    path: Any,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    *,
    clamp_dt_min: ClampMode = False,
    strict: bool = True,
    progress: bool | None = None,
) -> NemotronHForCausalLM:
    """Load a NemotronH checkpoint as the reference network.

    dtype None: float32 on CPU, bfloat16 elsewhere (e_score_correction_bias stays float32). strict: the
    checkpoint is validated (`check_checkpoint`) and every parameter must be loaded. A quantized checkpoint's
    weights are dequantized.
    """
    from trtllm_nemotron.checkpoint import check_checkpoint, open_checkpoint

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    with open_checkpoint(resolve_checkpoint_dir(path)) as reader:
        cfg = reader.config
        if strict:
            check_checkpoint(reader)
        model = build_model_skeleton(cfg, clamp_dt_min=clamp_dt_min, dtype=dtype)
        model.to_empty(device=device)
        if reader.quantization is not None:
            from trtllm_nemotron.checkpoint.dequant import dequantized_tensors

            items: Iterable[tuple[str, torch.Tensor]] = dequantized_tensors(reader, dtype)
            total = None
        else:
            names = reader.names()
            items = ((n, reader.get(n)) for n in names)
            total = len(names)
        show = progress if progress is not None else len(reader.names()) > 500
        missing = _copy_in(
            model, items, strict=strict, where=f"checkpoint {path}", progress=show, total=total
        )
        if missing:  # strict=False: the missing tensors get the random init instead of uninitialised memory
            fresh = _targets(model_from_config(cfg, seed=0, dtype=dtype, device=device))
            targets = _targets(model)
            with torch.no_grad():
                for n in missing:
                    targets[n].copy_(fresh[n])
    model.source_path = str(
        resolve_checkpoint_dir(path)
    )  # the checkpoint dir (an engine dir's checkpoint/): its onnx/ sibling
    return model.eval()
