"""FP8 E4M3 with one fp32 scale per tensor: ModelOpt's `FP8` quant_algo, byte for byte.

Format (spec §5.2; ModelOpt `export/quant_utils.py` `get_scaling_factor` / `to_quantized_weight`):
    weight_scale = amax(|W|) / 448                 fp32 scalar (shape [])
    weight       = float8_e4m3fn(W / weight_scale) same shape as W
    input_scale  = amax(|x|)_calib / 448           fp32 scalar, from calibration (static activations)
    W ≈ float(weight) * weight_scale
Numerics that decide byte equality with ModelOpt: the division runs in W's own dtype (a bf16 weight
divided by a 0-dim fp32 scale stays bf16, as in torch's type promotion), then one cast to E4M3
(round to nearest even, saturating at 448). A tensor whose amax is 0 gets scale 1.0, which is what
ModelOpt's export writes (`_sanitize_export_amax` replaces a zero amax by maxbound = 448).

Consumers: TRT-LLM `FP8QDQLinearMethod` on Hopper/Blackwell (per-tensor FP8 GEMM with
`alpha = input_scale * weight_scale`); FP8 KV cache uses the same scalar form (`k_scale`, `v_scale`).
This module encodes; decoding a stored tensor (`dequantize_fp8`) is `checkpoint/formats.py`.
"""

from __future__ import annotations

import torch

from trtllm_nemotron.checkpoint.formats import F8E4M3_MAX
from trtllm_nemotron.errors import QuantError


def scale_from_amax(amax: torch.Tensor | float) -> torch.Tensor:
    """Per-tensor FP8 scale `amax / 448` as an fp32 0-dim tensor; amax 0 (never activated) -> 1.0."""
    a = torch.as_tensor(amax, dtype=torch.float32).reshape(())
    a = torch.where(a == 0, torch.full_like(a, F8E4M3_MAX), a)
    return a / F8E4M3_MAX


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a weight to FP8 E4M3 with one per-tensor scale.

    Args:
        w: floating tensor of any shape (a linear weight is [out, in]).
    Returns:
        (w_fp8 float8_e4m3fn, same shape as w; weight_scale fp32 0-dim).
    """
    if not w.is_floating_point():
        raise QuantError(f"FP8 quantization needs a floating-point tensor, got dtype {w.dtype}")
    if w.numel() == 0:
        raise QuantError(f"FP8 quantization got an empty tensor of shape {tuple(w.shape)}")
    amax = w.abs().max().float()
    if not torch.isfinite(amax):
        raise QuantError("FP8 quantization: the tensor holds NaN or inf; fix the source weights")
    scale = scale_from_amax(amax)
    return (w / scale).to(torch.float8_e4m3fn), scale


def fake_quantize(x: torch.Tensor, input_scale: torch.Tensor | float) -> torch.Tensor:
    """Simulate static FP8 activation quantization: saturate to ±448·scale, round to E4M3, rescale.

    This is what a per-tensor FP8 GEMM sees of its input (TRT-LLM's static `input_scale`).
    """
    s = torch.as_tensor(input_scale, dtype=torch.float32)
    q = (x.float() / s).clamp(-F8E4M3_MAX, F8E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.float() * s).to(x.dtype)
