"""NVFP4: E2M1 values in blocks of 16 with an FP8 E4M3 scale per block and one fp32 scale per tensor.

ModelOpt's `NVFP4` quant_algo (group_size 16), byte for byte (spec §5.1, Appendix A; ModelOpt
`qtensor/nvfp4_tensor.py`). For a weight W [out, in] (in % 16 == 0), blocks b along `in`:

    weight_scale_2  = amax(|W|) / (6 * 448)                                   fp32 []
    weight_scale    = e4m3(clamp(amax(|W[o, b]|) / (6 * weight_scale_2),      e4m3 [out, in/16]
                             2^-9, 448));  a block with amax 0 gets 1.0
    code[o, i]      = E2M1(W[o, i] / (float(weight_scale[o, i//16]) * weight_scale_2))
    weight[o, k]    = code[o, 2k] | code[o, 2k+1] << 4                         uint8 [out, in/2]
    W ≈ E2M1_VALUES[code] * (float(weight_scale) * weight_scale_2)

Decisions that make the bytes equal ModelOpt's: every scale is computed in fp32 in the order above
(`amax / (6 * s2)`, not `amax / 6 / s2`); the division of W uses the *rounded* E4M3 block scale; E2M1
rounding is nearest with ties to the even code (0.75 -> 1.0, 1.25 -> 1.0, 2.5 -> 2.0, 3.5 -> 4.0);
magnitudes above 6 saturate to 6; element 2k sits in the low nibble; -0 keeps code 0 (sign only when
`x < 0`). A whole tensor of zeros gets `weight_scale_2 = 1/448` (ModelOpt's export replaces a zero amax
by the quantizer's maxbound 6 instead of dividing by zero).

Activations (W4A4) use the same format with blocks quantized dynamically at run time; only the global
scale is calibrated: `input_scale = amax(|x|) / (6 * 448)` and the kernel quantizes x with
`weight_scale_2 := input_scale` (TRT-LLM `fp4_quantize(x, 1 / input_scale, 16)`). `fake_quantize`
simulates exactly that on CPU. Consumers: TRT-LLM `NVFP4LinearMethod` (Blackwell; it swizzles the
row-major block scales at load, so checkpoints keep them plain) and the W4A16 fallback on Hopper.
This module encodes; decoding a stored tensor (`dequantize_nvfp4`, `unpack_e2m1`) is `checkpoint/formats.py`.
"""

from __future__ import annotations

import torch

from trtllm_nemotron.checkpoint.formats import (
    E2M1_ROUND_DOWN_MIDPOINTS,
    E2M1_ROUND_UP_MIDPOINTS,
    F4_E2M1_MAX,
    F8E4M3_MAX,
    F8E4M3_MIN_SCALE,
    NVFP4_BLOCK,
    dequantize_nvfp4,
)
from trtllm_nemotron.errors import QuantError
from trtllm_nemotron.quant import nvfp4_native

GLOBAL_DIVISOR = F4_E2M1_MAX * F8E4M3_MAX  # 2688: amax -> weight_scale_2 / input_scale
_MIDPOINTS = tuple(sorted(E2M1_ROUND_DOWN_MIDPOINTS + E2M1_ROUND_UP_MIDPOINTS))


def global_scale_from_amax(amax: torch.Tensor | float) -> torch.Tensor:
    """`amax / (6 * 448)` as an fp32 0-dim tensor; amax 0 -> maxbound 6 (ModelOpt export sanitising)."""
    a = torch.as_tensor(amax, dtype=torch.float32).reshape(())
    a = torch.where(a == 0, torch.full_like(a, F4_E2M1_MAX), a)
    return a / GLOBAL_DIVISOR


def _check(w: torch.Tensor) -> None:
    if not w.is_floating_point():
        raise QuantError(f"NVFP4 quantization needs a floating-point tensor, got dtype {w.dtype}")
    if w.dim() == 0 or w.shape[-1] % NVFP4_BLOCK != 0 or w.shape[-1] == 0:
        raise QuantError(
            f"NVFP4 needs the last (input) dimension to be a positive multiple of {NVFP4_BLOCK}, got shape "
            f"{tuple(w.shape)}; keep this module in BF16 or FP8 (choose another recipe or exclude it)"
        )


def block_amax(w: torch.Tensor) -> torch.Tensor:
    """max |w| per 16-block, fp32: [..., in] -> [..., in/16]."""
    return w.reshape(*w.shape[:-1], -1, NVFP4_BLOCK).abs().amax(dim=-1).float()


def block_scales(amax: torch.Tensor, weight_scale_2: torch.Tensor) -> torch.Tensor:
    """E4M3 block scales [..., nb] from block amaxes [..., nb] under the global scale `weight_scale_2`."""
    scale = amax / (F4_E2M1_MAX * weight_scale_2)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # all-zero block: scale 1.0
    return scale.clamp(min=F8E4M3_MIN_SCALE, max=F8E4M3_MAX).to(torch.float8_e4m3fn)


def _bucket_bounds() -> tuple[float, ...]:
    """Midpoints of the E2M1 magnitude grid, each round-up midpoint nudged one fp32 ulp down.

    bucketize counts the bounds strictly below |q|; nudging a round-up midpoint m to nextafter(m, 0) makes
    |q| == m count it too (no fp32 value lies between the two), so one bucketize pass gives
    round-to-nearest with ties to the even code.
    """
    up = set(E2M1_ROUND_UP_MIDPOINTS)
    out = []
    for m in _MIDPOINTS:
        t = torch.tensor(m, dtype=torch.float32)
        out.append(torch.nextafter(t, torch.zeros(())).item() if m in up else m)
    return tuple(out)


_BOUNDS = _bucket_bounds()


def e2m1_codes(q: torch.Tensor) -> torch.Tensor:
    """Round fp32 values (already divided by their scale) to 4-bit E2M1 codes, uint8 in 0..15.

    magnitude index = #(midpoints strictly below |q|) + [|q| is a round-up midpoint]
    which is round-to-nearest on [0, .5, 1, 1.5, 2, 3, 4, 6] with ties to the even index; > 6 saturates.
    One bucketize pass over nudged bounds computes it (`_bucket_bounds`); the sign is bit 3.
    """
    q = q.float()
    bounds = torch.tensor(_BOUNDS, dtype=torch.float32, device=q.device)
    idx = torch.bucketize(q.abs(), bounds, out_int32=True).to(torch.uint8)
    return idx | ((q < 0).to(torch.uint8) << 3)  # sign bit; -0.0 is not < 0


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: element 2k in the low nibble, 2k+1 in the high. [..., n] -> [..., n/2]."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def quantize(
    w: torch.Tensor, weight_scale_2: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize `w` [..., in] (in % 16 == 0) to NVFP4.

    Args:
        w: floating tensor; a linear weight [out, in] or an activation [tokens, in].
        weight_scale_2: the global scale to use (activations pass their calibrated input_scale);
            default `amax(|w|) / 2688`.
    Returns:
        (packed uint8 [..., in/2], weight_scale float8_e4m3fn [..., in/16], weight_scale_2 fp32 []).
    """
    _check(w)
    fast = nvfp4_native.usable(w)  # CPU: the two-pass C++ kernel (same fp32 operations, same bytes)
    if fast:
        bamax, nonfinite = nvfp4_native.block_amax(w)  # [..., nb]
    else:
        bamax = block_amax(w)
        nonfinite = False
    if weight_scale_2 is None:
        amax = bamax.max()
        if nonfinite or not torch.isfinite(amax):
            raise QuantError("NVFP4 quantization: the tensor holds NaN or inf; fix the source weights")
        weight_scale_2 = global_scale_from_amax(amax)
    else:
        weight_scale_2 = torch.as_tensor(weight_scale_2, dtype=torch.float32, device=w.device).reshape(())
    scale = block_scales(bamax, weight_scale_2)  # [..., nb] e4m3
    divisor = scale.float() * weight_scale_2  # fp32 [..., nb]
    if fast:
        return nvfp4_native.e2m1_pack(w, divisor), scale, weight_scale_2
    blocks = w.reshape(*w.shape[:-1], -1, NVFP4_BLOCK)  # [..., nb, 16]
    q = blocks / divisor.unsqueeze(-1)  # fp32 [..., nb, 16]
    codes = e2m1_codes(q.reshape(w.shape))
    return pack(codes), scale, weight_scale_2


def fake_quantize(x: torch.Tensor, input_scale: torch.Tensor | float) -> torch.Tensor:
    """Simulate W4A4 activation quantization: dynamic 16-blocks under the calibrated global scale."""
    s = torch.as_tensor(input_scale, dtype=torch.float32)
    packed, scale, s2 = quantize(x.float(), weight_scale_2=s)
    return dequantize_nvfp4(packed, scale, s2, dtype=x.dtype)
