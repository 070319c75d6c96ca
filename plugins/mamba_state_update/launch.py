"""Launch rule for `_mamba_state_update_kernel`, shared by the torch launcher, AOT and the TensorRT plugin.

Pure Python (no triton, no tensorrt), so it is tested anywhere. Sizes may be ints or TensorRT symbolic
shape expressions: only `*` and the `cdiv` passed in are applied to them.

Kernel argument order is the TensorRT quickly-deployable-plugin convention: inputs, scalars, outputs.
    inputs : xbc, dt, conv_weight, conv_bias, dt_bias, A, D, slot_idx, conv_state_in, ssm_state_in,
             conv_window (= conv_state_in[slot_idx], [batch, conv_dim, K-1]: what the conv reads)
    scalars: T, H, P, N, G, conv_dim                                  (int32)
    outputs: y, conv_state_out, ssm_state_out, ssm_steps, conv_steps  (state outs alias the ins)
Grid: (batch, H, cdiv(P, BLOCK_P)), mamba_ssm's selective_state_update layout (heads x head-dim blocks):
for Super at batch 1, 128 heads x 4 blocks = 512 programs. BLOCK_P keeps the fp32 state tile
[BLOCK_P, N] at <= 2048 elements. Reads of the conv window go to `conv_window`, a snapshot gathered before
the launch, so the in-place writes of the pool need no ordering between programs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KERNEL_NAME = "_mamba_state_update_kernel"
INPUTS = (
    "xbc",
    "dt",
    "conv_weight",
    "conv_bias",
    "dt_bias",
    "A",
    "D",
    "slot_idx",
    "conv_state_in",
    "ssm_state_in",
    "conv_window",
)
SCALARS = ("T", "H", "P", "N", "G", "conv_dim")
OUTPUTS = ("y", "conv_state_out", "ssm_state_out", "ssm_steps", "conv_steps")
GRID_RULE = "(batch, H, cdiv(P, BLOCK_P))"

# torch dtype name -> triton signature type
TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int32": "i32"}


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LaunchSpec:
    kernel: str
    grid: tuple[Any, Any, Any]
    scalars: tuple[Any, ...]  # values for SCALARS, in order
    constexprs: dict[str, int | bool]
    num_warps: int
    signature: dict[str, str] = field(default_factory=dict)


def launch_spec(
    *,
    batch: Any,
    T: Any,
    H: int,
    P: int,
    N: int,
    G: int,
    K: int,
    keep_steps: bool,
    act_dtype: str = "bfloat16",  # xbc, dt, conv_state
    weight_dtype: str | None = None,  # conv_weight, conv_bias (default: act_dtype)
    state_dtype: str = "float32",  # ssm_state
    cdiv: Callable[[Any, Any], Any] = _cdiv,
) -> LaunchSpec:
    """Grid, scalar arguments, constexprs and Triton signature for one launch.

    `batch` and `T` may be symbolic; H, P, N, G, K are ints (fixed by the model config).
    """
    del cdiv  # H and P are ints (the config's): the grid needs no symbolic division
    conv_dim = H * P + 2 * G * N
    block_n = next_pow2(N)
    block_p = max(1, min(next_pow2(P), 2048 // block_n))
    num_warps = 4
    constexprs: dict[str, int | bool] = {
        "K": K,
        "BLOCK_K": next_pow2(K),
        "BLOCK_P": block_p,
        "BLOCK_N": block_n,
        "KEEP_STEPS": bool(keep_steps),
    }
    a, w, s = TRITON_TYPES[act_dtype], TRITON_TYPES[weight_dtype or act_dtype], TRITON_TYPES[state_dtype]
    ptr = {
        "xbc": a, "dt": a, "conv_weight": w, "conv_bias": w, "dt_bias": "fp32", "A": "fp32", "D": "fp32",
        "slot_idx": "i32", "conv_state_in": a, "ssm_state_in": s, "conv_window": a,
        "y": "fp32", "conv_state_out": a, "ssm_state_out": s, "ssm_steps": s, "conv_steps": a,
    }  # fmt: skip
    signature = {n: "*" + ptr[n] for n in INPUTS}
    signature.update({n: "i32" for n in SCALARS})
    signature.update({n: "*" + ptr[n] for n in OUTPUTS})
    signature.update({n: "constexpr" for n in constexprs})
    return LaunchSpec(
        kernel=KERNEL_NAME,
        grid=(batch, H, _cdiv(P, block_p)),
        scalars=(T, H, P, N, G, conv_dim),
        constexprs=constexprs,
        num_warps=num_warps,
        signature=signature,
    )


def aot_variants(cfg: Any) -> list[dict[str, Any]]:
    """The variants compiled ahead of time for a NemotronHConfig: activations in the config's dtype
    (bf16 for released models; fp16 configs get fp16), SSM state fp32 / fp16, single-step / keep-steps.
    Each is the kwargs of `launch_spec` minus batch and T."""
    act = "float16" if str(cfg.torch_dtype) in ("float16", "half") else "bfloat16"
    return [
        dict(
            H=cfg.mamba_num_heads,
            P=cfg.mamba_head_dim,
            N=cfg.ssm_state_size,
            G=cfg.n_groups,
            K=cfg.conv_kernel,
            keep_steps=keep,
            act_dtype=act,
            state_dtype=state,
        )
        for state in ("float32", "float16")
        for keep in (False, True)
    ]


def variant_name(v: dict[str, Any]) -> str:
    short = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
    steps = "_steps" if v["keep_steps"] else ""
    return f"mamba_state_update_{short[v['act_dtype']]}_state{short[v['state_dtype']]}{steps}"
