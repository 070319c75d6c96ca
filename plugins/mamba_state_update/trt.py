"""TensorRT quickly-deployable plugin `trtllm_nemotron::mamba_state_update` (AOT: the Triton PTX is embedded
in the engine, so it runs without Python, e.g. under Triton's TensorRT backend).

Inputs (launch.INPUTS): xbc [batch, T, conv_dim], dt [batch, T, H], conv_weight [conv_dim, K],
conv_bias [conv_dim], dt_bias/A/D [H] fp32, slot_idx [batch] int32, conv_state [pool, conv_dim, K-1],
ssm_state [pool, H, P, N], conv_window [batch, conv_dim, K-1] (= conv_state[slot_idx], a Gather in the
graph: the kernel reads the conv window from it, never from the pool it updates in place). Outputs:
y [batch, T, H*P] fp32, conv_state and ssm_state (aliased: updated in place), ssm_steps [batch, T, H, P, N]
and conv_steps [batch, T, conv_dim, K-1] (shape [1] dummies unless keep_steps). Attributes: num_heads,
n_groups, head_dim, state_size, conv_kernel, keep_steps (ints; AOT attributes are used at build time
only). Import only where tensorrt exists.

No `from __future__ import annotations` here: TensorRT's validators read the annotations as objects.
"""

from plugins._trt_common import dtype_name, to_trtp, trt_import
from plugins.aot import aot_launch
from plugins.mamba_state_update.launch import launch_spec

trt, trtp = trt_import()

PLUGIN = "trtllm_nemotron::mamba_state_update"


@trtp.register(PLUGIN)
def mamba_state_update_desc(
    xbc: trtp.TensorDesc,
    dt: trtp.TensorDesc,
    conv_weight: trtp.TensorDesc,
    conv_bias: trtp.TensorDesc,
    dt_bias: trtp.TensorDesc,
    A: trtp.TensorDesc,
    D: trtp.TensorDesc,
    slot_idx: trtp.TensorDesc,
    conv_state: trtp.TensorDesc,
    ssm_state: trtp.TensorDesc,
    conv_window: trtp.TensorDesc,
    num_heads: int,
    n_groups: int,
    head_dim: int,
    state_size: int,
    conv_kernel: int,
    keep_steps: int,
) -> tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
    batch, T = xbc.shape_expr[0], xbc.shape_expr[1]
    y = trtp.from_shape_expr((batch, T, num_heads * head_dim), dtype=trt.float32)
    if keep_steps:
        ssm_steps = trtp.from_shape_expr((batch, T, num_heads, head_dim, state_size), dtype=ssm_state.dtype)
        conv_steps = trtp.from_shape_expr(
            (batch, T, xbc.shape_expr[2], conv_kernel - 1), dtype=conv_state.dtype
        )
    else:
        ssm_steps = trtp.from_shape_expr((1,), dtype=ssm_state.dtype)
        conv_steps = trtp.from_shape_expr((1,), dtype=conv_state.dtype)
    return y, conv_state.aliased(), ssm_state.aliased(), ssm_steps, conv_steps


def type_combination(act: str, state: str) -> list[str]:
    """Types of the 11 inputs then 5 outputs for activations `act` and SSM state `state` (TensorRT names)."""
    inputs = [act, act, act, act, "FP32", "FP32", "FP32", "INT32", act, state, act]
    return inputs + ["FP32", act, state, state, act]


@trtp.autotune(PLUGIN)
def mamba_state_update_autotune(
    xbc: trtp.TensorDesc,
    dt: trtp.TensorDesc,
    conv_weight: trtp.TensorDesc,
    conv_bias: trtp.TensorDesc,
    dt_bias: trtp.TensorDesc,
    A: trtp.TensorDesc,
    D: trtp.TensorDesc,
    slot_idx: trtp.TensorDesc,
    conv_state: trtp.TensorDesc,
    ssm_state: trtp.TensorDesc,
    conv_window: trtp.TensorDesc,
    outputs,
) -> list[trtp.AutoTuneCombination]:
    return [
        trtp.AutoTuneCombination(", ".join(type_combination(act, state)), "LINEAR")
        for act in ("BF16", "FP16")
        for state in ("FP32", "FP16")
    ]


@trtp.aot_impl(PLUGIN)
def mamba_state_update_aot_impl(
    xbc: trtp.TensorDesc,
    dt: trtp.TensorDesc,
    conv_weight: trtp.TensorDesc,
    conv_bias: trtp.TensorDesc,
    dt_bias: trtp.TensorDesc,
    A: trtp.TensorDesc,
    D: trtp.TensorDesc,
    slot_idx: trtp.TensorDesc,
    conv_state: trtp.TensorDesc,
    ssm_state: trtp.TensorDesc,
    conv_window: trtp.TensorDesc,
    num_heads: int,
    n_groups: int,
    head_dim: int,
    state_size: int,
    conv_kernel: int,
    keep_steps: int,
    outputs,
    tactic: int,
) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
    spec = launch_spec(
        batch=xbc.shape_expr[0],
        T=xbc.shape_expr[1],
        H=num_heads,
        P=head_dim,
        N=state_size,
        G=n_groups,
        K=conv_kernel,
        keep_steps=bool(keep_steps),
        act_dtype=dtype_name(trt, xbc.dtype),
        weight_dtype=dtype_name(trt, conv_weight.dtype),
        state_dtype=dtype_name(trt, ssm_state.dtype),
        cdiv=trtp.cdiv,
    )
    return to_trtp(trtp, aot_launch("plugins.mamba_state_update.kernel", spec))
