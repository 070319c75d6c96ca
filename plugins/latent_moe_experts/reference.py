"""Routed experts of a (Latent)MoE layer, the specification (pure torch) for kernel.py and the plugins.

Nemotron-H's experts are non-gated ReLU² MLPs, run in the latent space (X = moe_latent_size; X = hidden
for a plain MoE). Over the T*k (token, slot) assignments a = t*k + j that the routing op produced
(`plugins.latent_moe_routing`: weights [T, k], counts [E], perm [T*k]):

    offsets = cumsum(counts) - counts                       # expert e owns perm[offsets[e] : +counts[e]]
    for each expert e, for each of its assignments a (token t = a // k, slot j = a % k):
        h        = relu(x[t] @ up[e].T) ** 2                # [F]   (fp32 accumulation)
        h        = round(h, x.dtype)                        # the activation dtype, as the network does
        out[t,j] = weights[t, j] * (h @ down[e].T)          # [X]   fp32

The op returns the weighted per-slot outputs `out [T, k, X]` fp32; the MoE layer sums them over k
(`out.sum(1)`, slot order) and projects back with fc2_latent_proj. The sum stays outside because a
TensorRT quickly-deployable AOT plugin launches exactly one kernel and its outputs are not zeroed: a
kernel that owns whole rows of `out` needs neither atomics nor a zeroed buffer, and is deterministic.
(The transient `out` is T*k*X*4 bytes: 90 MB for Super at T = 1024 tokens.)

Weights, stacked over experts in checkpoint layout (`experts.{e}.up_proj.weight` is [F, X]):
- BF16 (or any float dtype): up [E, F, X], down [E, X, F]; cast to the activation dtype.
- NVFP4 (ModelOpt's format, `trtllm_nemotron.quant.nvfp4`): packed E2M1 uint8 up [E, F, X/2] /
  down [E, X, F/2] (element 2i in the low nibble), FP8 E4M3 block scales (blocks of 16 along the input
  dim) up_scale [E, F, X/16] / down_scale [E, X, F/16], FP32 global scales up_scale_2 [E] / down_scale_2
  [E] (`weight_scale_2` of each expert). Dequantised exactly as the checkpoint loader
  (`trtllm_nemotron.checkpoint.formats.dequantize_nvfp4`):
  `E2M1_VALUES[code] * (float(scale) * scale_2)` in fp32, then cast to the activation dtype (the
  network's load-time dequantisation; activations are not quantized: W4A16).

Ops (torch custom ops in op.py and TensorRT QDPs in trt.py, same names, same input order):
    trtllm_nemotron::latent_moe_experts        (x, weights, counts, perm, up, down) -> out
    trtllm_nemotron::latent_moe_experts_nvfp4  (x, weights, counts, perm, up, up_scale, up_scale_2,
                                                down, down_scale, down_scale_2) -> out
No attributes (E, F, X, k come from the shapes). The TensorRT plugins take the packed E2M1 bytes and the
E4M3 block scales as INT8 tensors holding the same bits (TensorRT-Edge-LLM's MoE plugins do the same);
the torch ops take uint8 / float8_e4m3fn. Python entry point: `plugins.latent_moe_experts.
latent_moe_experts(x, weights, counts, perm, up, down, *, up_scale=None, up_scale_2=None,
down_scale=None, down_scale_2=None)` (NVFP4 when the scales are given).

Rows outside every expert's range (counts summing below T*k cannot happen with routing's output) are not
written. `x` may be bf16, fp16 or fp32; E, F, X are read from the weight shapes.
"""

from __future__ import annotations

import torch

from trtllm_nemotron.checkpoint.formats import dequantize_nvfp4


def _dense(
    w: torch.Tensor, scale: torch.Tensor | None, scale_2: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Stacked expert weights [E, out, in] in `dtype`, dequantised from NVFP4 when `scale` is given."""
    if scale is None:
        return w.to(dtype)
    assert scale_2 is not None
    return dequantize_nvfp4(w, scale, scale_2.float().reshape(-1, 1, 1), dtype=torch.float32).to(dtype)


def latent_moe_experts_ref(
    x: torch.Tensor,  # [T, X] latent activations (bf16 / fp16 / fp32)
    weights: torch.Tensor,  # [T, k] fp32 routed weights (routing op)
    counts: torch.Tensor,  # [E] int32 assignments per expert (routing op)
    perm: torch.Tensor,  # [T*k] int32 assignment ids grouped by expert (routing op)
    up: torch.Tensor,  # [E, F, X] float, or NVFP4 packed uint8 [E, F, X/2]
    down: torch.Tensor,  # [E, X, F] float, or NVFP4 packed uint8 [E, X, F/2]
    up_scale: torch.Tensor | None = None,  # NVFP4: float8_e4m3fn [E, F, X/16]
    up_scale_2: torch.Tensor | None = None,  # NVFP4: fp32 [E]
    down_scale: torch.Tensor | None = None,  # NVFP4: float8_e4m3fn [E, X, F/16]
    down_scale_2: torch.Tensor | None = None,  # NVFP4: fp32 [E]
) -> torch.Tensor:
    """Returns out [T, k, X] fp32: out[t, j] = weights[t, j] * Expert_{e(t, j)}(x[t]) (see module doc)."""
    T, X = x.shape
    k = weights.shape[1]
    up_w = _dense(up, up_scale, up_scale_2, x.dtype)  # [E, F, X]
    down_w = _dense(down, down_scale, down_scale_2, x.dtype)  # [E, X, F]
    out = torch.zeros(T * k, X, dtype=torch.float32, device=x.device)
    w_flat = weights.reshape(-1).float()  # [T*k]
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n == 0:
            continue
        a = perm[start : start + n].long()  # this expert's assignments
        start += n
        xr = x[a // k].float()  # [n, X]
        h = torch.relu(xr @ up_w[e].float().T).square().to(x.dtype).float()  # [n, F]
        out[a] = w_flat[a, None] * (h @ down_w[e].float().T)  # [n, X]
    return out.view(T, k, X)
