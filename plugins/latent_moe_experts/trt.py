"""TensorRT quickly-deployable plugins for the routed experts (AOT: Triton PTX embedded in the engine).

`trtllm_nemotron::latent_moe_experts`: x [T, X] (BF16 / FP16), weights [T, k] fp32, counts [E] int32,
    perm [T*k] int32, up [E, F, X], down [E, X, F] (the activation dtype) -> out [T, k, X] fp32.
`trtllm_nemotron::latent_moe_experts_nvfp4`: x, weights, counts, perm, up [E, F, X/2] INT8 (packed E2M1),
    up_scale [E, F, X/16] INT8 (E4M3 bits), up_scale_2 [E] fp32, down [E, X, F/2] INT8, down_scale
    [E, X, F/16] INT8, down_scale_2 [E] fp32 -> out [T, k, X] fp32.
No attributes: E, F, X and k are read from the shapes. reference.py has the maths; the graph sums out over k.
Import only where tensorrt exists.

No `from __future__ import annotations` here: TensorRT's validators read the annotations as objects.
"""

from plugins._trt_common import dtype_name, to_trtp, trt_import
from plugins.aot import aot_launch
from plugins.latent_moe_experts.launch import launch_spec

trt, trtp = trt_import()

EXPERTS = "trtllm_nemotron::latent_moe_experts"
EXPERTS_NVFP4 = "trtllm_nemotron::latent_moe_experts_nvfp4"
_KERNELS = "plugins.latent_moe_experts.kernel"


def _known(expr):
    """The int value of a shape expression TensorRT knows at build time (weights' dims), else the expression."""
    return expr.constant_value() if not expr.is_fake and expr.is_constant else expr


def _spec(x, weights, up, nvfp4: bool):
    T, X = x.shape_expr[0], x.shape_expr[1]
    F = up.shape_expr[1]  # up is [E, F, X] or packed [E, F, X/2]: dim 1 is F either way
    return launch_spec(
        T=T,
        E=up.shape_expr[0],
        X=_known(X),
        F=_known(F),
        k=weights.shape_expr[1],
        nvfp4=nvfp4,
        act_dtype=dtype_name(trt, x.dtype),
        weight_dtype="int8" if nvfp4 else dtype_name(trt, up.dtype),
        cdiv=trtp.cdiv,
    )


def _out(x: trtp.TensorDesc, weights: trtp.TensorDesc) -> trtp.TensorDesc:
    return trtp.from_shape_expr((x.shape_expr[0], weights.shape_expr[1], x.shape_expr[1]), dtype=trt.float32)


@trtp.register(EXPERTS)
def latent_moe_experts_desc(
    x: trtp.TensorDesc,
    weights: trtp.TensorDesc,
    counts: trtp.TensorDesc,
    perm: trtp.TensorDesc,
    up: trtp.TensorDesc,
    down: trtp.TensorDesc,
) -> trtp.TensorDesc:
    return _out(x, weights)


@trtp.autotune(EXPERTS)
def latent_moe_experts_autotune(
    x: trtp.TensorDesc,
    weights: trtp.TensorDesc,
    counts: trtp.TensorDesc,
    perm: trtp.TensorDesc,
    up: trtp.TensorDesc,
    down: trtp.TensorDesc,
    outputs,
) -> list[trtp.AutoTuneCombination]:
    return [
        trtp.AutoTuneCombination(f"{a}, FP32, INT32, INT32, {a}, {a}, FP32", "LINEAR")
        for a in ("BF16", "FP16")
    ]


@trtp.aot_impl(EXPERTS)
def latent_moe_experts_aot_impl(
    x: trtp.TensorDesc,
    weights: trtp.TensorDesc,
    counts: trtp.TensorDesc,
    perm: trtp.TensorDesc,
    up: trtp.TensorDesc,
    down: trtp.TensorDesc,
    outputs,
    tactic: int,
) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
    return to_trtp(trtp, aot_launch(_KERNELS, _spec(x, weights, up, nvfp4=False)))


@trtp.register(EXPERTS_NVFP4)
def latent_moe_experts_nvfp4_desc(
    x: trtp.TensorDesc,
    weights: trtp.TensorDesc,
    counts: trtp.TensorDesc,
    perm: trtp.TensorDesc,
    up: trtp.TensorDesc,
    up_scale: trtp.TensorDesc,
    up_scale_2: trtp.TensorDesc,
    down: trtp.TensorDesc,
    down_scale: trtp.TensorDesc,
    down_scale_2: trtp.TensorDesc,
) -> trtp.TensorDesc:
    return _out(x, weights)


@trtp.autotune(EXPERTS_NVFP4)
def latent_moe_experts_nvfp4_autotune(
    x: trtp.TensorDesc,
    weights: trtp.TensorDesc,
    counts: trtp.TensorDesc,
    perm: trtp.TensorDesc,
    up: trtp.TensorDesc,
    up_scale: trtp.TensorDesc,
    up_scale_2: trtp.TensorDesc,
    down: trtp.TensorDesc,
    down_scale: trtp.TensorDesc,
    down_scale_2: trtp.TensorDesc,
    outputs,
) -> list[trtp.AutoTuneCombination]:
    return [
        trtp.AutoTuneCombination(
            f"{a}, FP32, INT32, INT32, INT8, INT8, FP32, INT8, INT8, FP32, FP32", "LINEAR"
        )
        for a in ("BF16", "FP16")
    ]


@trtp.aot_impl(EXPERTS_NVFP4)
def latent_moe_experts_nvfp4_aot_impl(
    x: trtp.TensorDesc,
    weights: trtp.TensorDesc,
    counts: trtp.TensorDesc,
    perm: trtp.TensorDesc,
    up: trtp.TensorDesc,
    up_scale: trtp.TensorDesc,
    up_scale_2: trtp.TensorDesc,
    down: trtp.TensorDesc,
    down_scale: trtp.TensorDesc,
    down_scale_2: trtp.TensorDesc,
    outputs,
    tactic: int,
) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
    return to_trtp(trtp, aot_launch(_KERNELS, _spec(x, weights, up, nvfp4=True)))
