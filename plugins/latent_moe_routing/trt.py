"""TensorRT quickly-deployable plugins for MoE routing (AOT: Triton PTX embedded in the engine).

`trtllm_nemotron::latent_moe_routing`: logits [T, E] fp32, bias [E] fp32 -> weights [T, k] fp32,
    idx [T, k] int32. Attributes: num_experts, top_k, n_group, topk_group, norm_topk_prob (int),
    routed_scaling_factor (float, baked into the PTX as a constexpr).
`trtllm_nemotron::moe_expert_permutation`: idx [T, k] int32 -> counts [E] int32, perm [T*k] int32.
    Attribute: num_experts.
(A quickly-deployable AOT plugin launches one kernel, so routing and the permutation are two plugins;
the torch op runs both.) Import only where tensorrt exists.

No `from __future__ import annotations` here: TensorRT's validators read the annotations as objects
(one TensorDesc per output, the aot_impl return type), not as strings. Every aot_impl takes all the
attributes in registration order: TensorRT's AOT launcher passes them all, positionally.
"""

from plugins._trt_common import to_trtp, trt_import
from plugins.aot import aot_launch
from plugins.latent_moe_routing.launch import perm_spec, route_spec

trt, trtp = trt_import()

ROUTING = "trtllm_nemotron::latent_moe_routing"
PERMUTATION = "trtllm_nemotron::moe_expert_permutation"
_KERNELS = "plugins.latent_moe_routing.kernel"


@trtp.register(ROUTING)
def latent_moe_routing_desc(
    logits: trtp.TensorDesc,
    bias: trtp.TensorDesc,
    num_experts: int,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: int,
    routed_scaling_factor: float,
) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
    T = logits.shape_expr[0]
    weights = trtp.from_shape_expr((T, top_k), dtype=trt.float32)
    idx = trtp.from_shape_expr((T, top_k), dtype=trt.int32)
    return weights, idx


@trtp.autotune(ROUTING)
def latent_moe_routing_autotune(
    logits: trtp.TensorDesc, bias: trtp.TensorDesc, outputs
) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination("FP32, FP32, FP32, INT32", "LINEAR")]


@trtp.aot_impl(ROUTING)
def latent_moe_routing_aot_impl(
    logits: trtp.TensorDesc,
    bias: trtp.TensorDesc,
    num_experts: int,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: int,
    routed_scaling_factor: float,
    outputs,
    tactic: int,
) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
    spec = route_spec(
        T=logits.shape_expr[0],
        E=num_experts,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=bool(norm_topk_prob),
        routed_scaling_factor=routed_scaling_factor,
        cdiv=trtp.cdiv,
    )
    return to_trtp(trtp, aot_launch(_KERNELS, spec))


@trtp.register(PERMUTATION)
def moe_expert_permutation_desc(
    idx: trtp.TensorDesc, num_experts: int
) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
    n_assign = idx.shape_expr[0] * idx.shape_expr[1]
    counts = trtp.from_shape_expr((num_experts,), dtype=trt.int32)
    perm = trtp.from_shape_expr((n_assign,), dtype=trt.int32)
    return counts, perm


@trtp.autotune(PERMUTATION)
def moe_expert_permutation_autotune(idx: trtp.TensorDesc, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination("INT32, INT32, INT32", "LINEAR")]


@trtp.aot_impl(PERMUTATION)
def moe_expert_permutation_aot_impl(
    idx: trtp.TensorDesc, num_experts: int, outputs, tactic: int
) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
    spec = perm_spec(T=idx.shape_expr[0], E=num_experts, top_k=idx.shape_expr[1])
    return to_trtp(trtp, aot_launch(_KERNELS, spec))
