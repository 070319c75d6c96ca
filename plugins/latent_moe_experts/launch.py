"""Launch rule for the routed-expert kernels, shared by the torch launcher, AOT and the TensorRT plugins.

Pure Python (no triton, no tensorrt). T, E and X may be ints or TensorRT symbolic shape expressions: only
`cdiv` (passed in) is applied to them. Argument order: inputs, scalars, outputs (QDP convention).

_latent_moe_experts_kernel        (x, weights, counts, perm, up, down)                      (k, E, X, F) (out)
_latent_moe_experts_nvfp4_kernel  (x, weights, counts, perm, up, up_scale, up_scale_2,
                                   down, down_scale, down_scale_2)                          (k, E, X, F) (out)
Grid (E, cdiv(T, BLOCK_M), cdiv(X, BLOCK_N)): program (e, m, n) takes rows m*BLOCK_M.. of expert e's
assignments (an expert holds at most T of them; programs past counts[e] return at once) and columns
n*BLOCK_N.. of the output. It loops over F in BLOCK_F chunks: h = relu(x @ up[e, chunk].T)² over X in
BLOCK_K steps, then acc += h @ down[e, n-block, chunk].T; finally out[assignment, n-block] = w * acc.
Whole output rows belong to one program each: no atomics, no zeroed buffer, deterministic. The up
projection is recomputed per output block (cdiv(X, BLOCK_N) times: 4 for Super's X = 1024), which buys
the parallelism a decode step needs (22 experts x 4 blocks of work at T = 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plugins.mamba_state_update.launch import TRITON_TYPES, LaunchSpec, next_pow2

KERNEL = "_latent_moe_experts_kernel"
KERNEL_NVFP4 = "_latent_moe_experts_nvfp4_kernel"
INPUTS = ("x", "weights", "counts", "perm", "up", "down")
INPUTS_NVFP4 = (
    "x",
    "weights",
    "counts",
    "perm",
    "up",
    "up_scale",
    "up_scale_2",
    "down",
    "down_scale",
    "down_scale_2",
)
SCALARS = ("k", "E", "X", "F")
OUTPUTS = ("out",)
GRID_RULE = "(E, cdiv(T, BLOCK_M), cdiv(X, BLOCK_N))"
BLOCK_M, BLOCK_N, BLOCK_F, BLOCK_K = 16, 256, 64, 64
# TensorRT-side names of the byte tensors: the torch op passes uint8 (E2M1 pairs, E4M3 scales as bytes)
TRITON_TYPES = {**TRITON_TYPES, "uint8": "u8", "int8": "i8"}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _block(default: int, dim: Any) -> int:
    """`default`, shrunk to the dimension when it is a known int (never below 16, tl.dot's minimum)."""
    return max(16, min(default, next_pow2(dim))) if isinstance(dim, int) else default


def launch_spec(
    *,
    T: Any,
    E: Any,
    X: Any,
    F: Any,
    k: Any,
    nvfp4: bool,
    act_dtype: str = "bfloat16",
    weight_dtype: str = "bfloat16",  # BF16 path: the stacked weights' dtype; NVFP4: the byte tensors' dtype
    f32_dot: bool = False,  # True under Triton's interpreter (numpy has no bf16 dot; larger tiles too)
    cdiv: Callable[[Any, Any], Any] = _cdiv,
) -> LaunchSpec:
    """Grid, scalars, constexprs and Triton signature of one launch (X / F ints pick smaller blocks)."""
    if f32_dot and isinstance(X, int):  # Triton's interpreter: per-op overhead dominates, so larger tiles
        block_n, block_k, block_f = _block(512, X), _block(512, X), _block(256, F)
    else:
        block_n, block_k, block_f = _block(BLOCK_N, X), _block(BLOCK_K, X), _block(BLOCK_F, F)
    constexprs: dict[str, Any] = {
        "BLOCK_M": BLOCK_M,
        "BLOCK_N": block_n,
        "BLOCK_F": block_f,
        "BLOCK_K": block_k,
        # dots in fp32 (IEEE, no TF32) for fp32 activations, and under Triton's interpreter (numpy has no bf16
        # dot); the operands are rounded to the activation dtype first, so the products are the same
        "F32_DOT": act_dtype == "float32" or f32_dot,
    }
    a, w = TRITON_TYPES[act_dtype], TRITON_TYPES[weight_dtype]
    ptr = {
        "x": a,
        "weights": "fp32",
        "counts": "i32",
        "perm": "i32",
        "up": w,
        "down": w,
        "up_scale": w,
        "down_scale": w,
        "up_scale_2": "fp32",
        "down_scale_2": "fp32",
        "out": "fp32",
    }
    signature = {n: "*" + ptr[n] for n in (INPUTS_NVFP4 if nvfp4 else INPUTS)}
    signature.update({n: "i32" for n in SCALARS})
    signature.update({n: "*" + ptr[n] for n in OUTPUTS})
    signature.update({n: "constexpr" for n in constexprs})
    return LaunchSpec(
        kernel=KERNEL_NVFP4 if nvfp4 else KERNEL,
        grid=(
            E,
            cdiv(T, BLOCK_M),
            (_cdiv if isinstance(X, int) else cdiv)(X, block_n),
        ),  # TensorRT's cdiv refuses two ints
        scalars=(k, E, X, F),
        constexprs=constexprs,
        # NVFP4 decodes weight tiles in registers: 8 warps halve the per-thread load (H200, Super's shapes:
        # 1.8 ms vs 3.6 ms at T = 1, 28 ms vs 41 ms at T = 64); BF16 is best at 4 (docs/benchmarks.md)
        num_warps=8 if nvfp4 else 4,
        signature=signature,
    )


def aot_variants(cfg: Any) -> list[tuple[str, LaunchSpec]]:
    """(name, spec) compiled ahead of time for a NemotronHConfig: BF16 and NVFP4 weights (T = 1 here)."""
    act = "float16" if str(cfg.torch_dtype) in ("float16", "half") else "bfloat16"
    kw = dict(
        T=1,
        E=cfg.n_routed_experts,
        X=cfg.expert_dim,
        F=cfg.moe_intermediate_size,
        k=cfg.num_experts_per_tok,
        act_dtype=act,
    )
    return [
        ("latent_moe_experts", launch_spec(**kw, nvfp4=False, weight_dtype=act)),
        ("latent_moe_experts_nvfp4", launch_spec(**kw, nvfp4=True, weight_dtype="int8")),
    ]
