"""`torch.ops.trtllm_nemotron.latent_moe_experts[_nvfp4]`: the torch custom ops, their fake (meta)
implementations and the user-facing wrapper `latent_moe_experts(...)` that validates inputs.

Dispatch (plugins/_dispatch.py): the Triton-lang kernel on CUDA tensors, the torch reference on CPU, or
either forced for the whole process by TRTLLM_NEMOTRON_KERNELS=reference|interpret. Imports no triton.
"""

from __future__ import annotations

import torch

from plugins import _dispatch
from plugins.latent_moe_experts.reference import latent_moe_experts_ref
from trtllm_nemotron.errors import PluginError

_KERNEL_MODULE = "plugins.latent_moe_experts.kernel"


def _run(x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
    """x, weights, counts, perm, up, down[, up_scale, up_scale_2, down_scale, down_scale_2]: the backend's result."""
    backend = _dispatch.backend_for("latent_moe_experts", x.device.type)
    args = (x, *args)
    if backend == "reference":
        return latent_moe_experts_ref(*args)
    kmod = _dispatch.kernel_module(_KERNEL_MODULE, interpret=backend == "interpret")
    if backend == "interpret":
        with _dispatch.interpreting():
            return kmod.latent_moe_experts(*args)
    return kmod.latent_moe_experts(*args)


@torch.library.custom_op("trtllm_nemotron::latent_moe_experts", mutates_args=())
def _latent_moe_experts_op(
    x: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    perm: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
) -> torch.Tensor:
    return _run(x, weights, counts, perm, up, down)


@torch.library.custom_op("trtllm_nemotron::latent_moe_experts_nvfp4", mutates_args=())
def _latent_moe_experts_nvfp4_op(
    x: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    perm: torch.Tensor,
    up: torch.Tensor,
    up_scale: torch.Tensor,
    up_scale_2: torch.Tensor,
    down: torch.Tensor,
    down_scale: torch.Tensor,
    down_scale_2: torch.Tensor,
) -> torch.Tensor:
    return _run(x, weights, counts, perm, up, down, up_scale, up_scale_2, down_scale, down_scale_2)


def _fake(x: torch.Tensor, weights: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weights.shape[1], x.shape[1], dtype=torch.float32)


_latent_moe_experts_op.register_fake(_fake)
_latent_moe_experts_nvfp4_op.register_fake(_fake)


def _shape(name: str, t: torch.Tensor, want: tuple[int, ...], how: str = "") -> None:
    if tuple(t.shape) != want:
        raise PluginError(f"latent_moe_experts: {name} must be {list(want)}{how}; got {list(t.shape)}")


def latent_moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    perm: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    *,
    up_scale: torch.Tensor | None = None,
    up_scale_2: torch.Tensor | None = None,
    down_scale: torch.Tensor | None = None,
    down_scale_2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Routed experts over the routing op's permutation (reference.py has the maths and the formats).

    Args:
        x: [T, X] latent activations (bf16 / fp16 / fp32).
        weights, counts, perm: the routing op's outputs ([T, k] fp32, [E] int32, [T*k] int32).
        up, down: stacked expert weights, [E, F, X] / [E, X, F] (float), or NVFP4 packed uint8 [E, F, X/2] /
            [E, X, F/2] together with up_scale / down_scale (float8_e4m3fn [E, F, X/16] / [E, X, F/16]) and
            up_scale_2 / down_scale_2 (fp32 [E]).
    Returns:
        out [T, k, X] fp32, out[t, j] = weights[t, j] * Expert_{e(t, j)}(x[t]); the layer sums over k.
    """
    if x.dim() != 2 or weights.dim() != 2 or weights.shape[0] != x.shape[0]:
        raise PluginError(
            f"latent_moe_experts: need x [T, X] and weights [T, k]; got {list(x.shape)} and {list(weights.shape)}"
        )
    if not x.is_floating_point():
        raise PluginError(f"latent_moe_experts: x must be a float tensor; got {x.dtype}")
    T, X = x.shape
    k = weights.shape[1]
    scales = (up_scale, up_scale_2, down_scale, down_scale_2)
    nvfp4 = up.dtype == torch.uint8
    if nvfp4 != all(s is not None for s in scales) or (not nvfp4 and any(s is not None for s in scales)):
        raise PluginError(
            "latent_moe_experts: NVFP4 weights (uint8 up/down) need all four of up_scale, up_scale_2, down_scale, "
            f"down_scale_2, and float weights none; got up {up.dtype} with "
            f"{sum(s is not None for s in scales)} scale tensors"
        )
    if up.dim() != 3:
        raise PluginError(f"latent_moe_experts: up must be [E, F, X]; got {list(up.shape)}")
    E, F = up.shape[0], up.shape[1]
    _shape("counts", counts, (E,))
    _shape("perm", perm, (T * k,), " (T*k)")
    if (
        up_scale is not None
        and up_scale_2 is not None
        and down_scale is not None
        and down_scale_2 is not None
    ):
        if X % 16 or F % 16:
            raise PluginError(f"latent_moe_experts: NVFP4 needs X and F multiples of 16; got X={X}, F={F}")
        _shape("up", up, (E, F, X // 2), " (packed E2M1)")
        _shape("down", down, (E, X, F // 2), " (packed E2M1)")
        _shape("up_scale", up_scale, (E, F, X // 16))
        _shape("down_scale", down_scale, (E, X, F // 16))
        _shape("up_scale_2", up_scale_2, (E,))
        _shape("down_scale_2", down_scale_2, (E,))
        for name, s in (("up_scale", up_scale), ("down_scale", down_scale)):
            if s.dtype != torch.float8_e4m3fn:
                raise PluginError(f"latent_moe_experts: {name} must be float8_e4m3fn; got {s.dtype}")
        return torch.ops.trtllm_nemotron.latent_moe_experts_nvfp4(
            x, weights, counts, perm, up, up_scale, up_scale_2, down, down_scale, down_scale_2
        )
    _shape("up", up, (E, F, X))
    _shape("down", down, (E, X, F))
    return torch.ops.trtllm_nemotron.latent_moe_experts(x, weights, counts, perm, up, down)
