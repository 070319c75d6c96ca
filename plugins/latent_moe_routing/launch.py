"""Launch rules for the two routing kernels, shared by the torch launcher, AOT and the TensorRT plugins.

Pure Python (no triton, no tensorrt). T may be an int or a TensorRT symbolic shape expression: only `*`
and the `cdiv` passed in are applied to it. Argument order: inputs, scalars, outputs (QDP convention).

_latent_moe_routing_kernel   (logits, bias) (T, E) (weights, idx)            grid (cdiv(T, BLOCK_T), 1, 1)
    BLOCK_T tokens per program as a [BLOCK_T, BLOCK_E] tile; top-k by k rounds of "max, lowest index".
_expert_permutation_kernel   (idx) (n_assign, E) (counts, perm)             grid (1, 1, 1)
    one program: histogram of all T*k assignments, exclusive cumsum, then a second pass that places each
    chunk of BLOCK_A assignments at cursor[expert] + its rank among equal experts earlier in the chunk.
    (One program keeps the order deterministic; it is O(T*k) and small next to the expert GEMMs.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from plugins.mamba_state_update.launch import LaunchSpec, next_pow2

ROUTE_KERNEL = "_latent_moe_routing_kernel"
PERM_KERNEL = "_expert_permutation_kernel"
ROUTE_INPUTS, ROUTE_SCALARS, ROUTE_OUTPUTS = ("logits", "bias"), ("T", "E"), ("weights", "idx")
PERM_INPUTS, PERM_SCALARS, PERM_OUTPUTS = ("idx",), ("n_assign", "E"), ("counts", "perm")
ROUTE_GRID_RULE = "(cdiv(T, BLOCK_T), 1, 1)"
PERM_GRID_RULE = "(1, 1, 1)"
BLOCK_A = 64


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def route_spec(
    *,
    T: Any,
    E: int,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
    cdiv: Callable[[Any, Any], Any] = _cdiv,
) -> LaunchSpec:
    block_e = next_pow2(E)
    block_t = max(1, min(16, 2048 // block_e))
    constexprs: dict[str, Any] = {
        "TOP_K": int(top_k),
        "N_GROUP": int(n_group),
        "TOPK_GROUP": int(topk_group),
        "NORM": bool(norm_topk_prob),
        "SCALE": float(routed_scaling_factor),
        "BLOCK_T": block_t,
        "BLOCK_E": block_e,
        "BLOCK_K": next_pow2(top_k),
        "BLOCK_G": next_pow2(n_group),
    }
    signature = {
        "logits": "*fp32",
        "bias": "*fp32",
        "T": "i32",
        "E": "i32",
        "weights": "*fp32",
        "idx": "*i32",
    }
    signature.update({n: "constexpr" for n in constexprs})
    return LaunchSpec(
        kernel=ROUTE_KERNEL,
        grid=(cdiv(T, block_t), 1, 1),
        scalars=(T, E),
        constexprs=constexprs,
        num_warps=4,
        signature=signature,
    )


def perm_spec(*, T: Any, E: int, top_k: int) -> LaunchSpec:
    constexprs: dict[str, Any] = {"BLOCK_A": BLOCK_A, "BLOCK_E": next_pow2(E)}
    signature = {"idx": "*i32", "n_assign": "i32", "E": "i32", "counts": "*i32", "perm": "*i32"}
    signature.update({n: "constexpr" for n in constexprs})
    return LaunchSpec(
        kernel=PERM_KERNEL,
        grid=(1, 1, 1),
        scalars=(T * top_k, E),
        constexprs=constexprs,
        num_warps=4,
        signature=signature,
    )


def aot_variants(cfg: Any) -> list[tuple[str, LaunchSpec]]:
    """(name, spec) compiled ahead of time for a NemotronHConfig (T is a runtime scalar: 1 here)."""
    kw = dict(T=1, E=cfg.n_routed_experts, top_k=cfg.num_experts_per_tok)
    return [
        (
            "latent_moe_routing",
            route_spec(
                **kw,
                n_group=cfg.n_group,
                topk_group=cfg.topk_group,
                norm_topk_prob=cfg.norm_topk_prob,
                routed_scaling_factor=cfg.routed_scaling_factor,
            ),
        ),
        ("moe_expert_permutation", perm_spec(**kw)),
    ]
