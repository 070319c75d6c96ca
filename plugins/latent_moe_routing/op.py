"""`torch.ops.trtllm_nemotron.latent_moe_routing`: the torch custom op, its fake (meta) implementation and
the user-facing wrapper `latent_moe_routing(...)` that validates inputs.

Dispatch (plugins/_dispatch.py): the Triton-lang kernels on CUDA tensors, the torch reference on CPU, or
either forced for the whole process by TRTLLM_NEMOTRON_KERNELS=reference|interpret. Imports no triton.
"""

from __future__ import annotations

import torch

from plugins import _dispatch
from plugins.latent_moe_routing.reference import latent_moe_routing_ref
from trtllm_nemotron.errors import PluginError

_KERNEL_MODULE = "plugins.latent_moe_routing.kernel"


@torch.library.custom_op("trtllm_nemotron::latent_moe_routing", mutates_args=())
def _latent_moe_routing_op(
    logits: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (logits, bias, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor)
    backend = _dispatch.backend_for("latent_moe_routing", logits.device.type)
    if backend == "reference":
        return latent_moe_routing_ref(*args)
    kmod = _dispatch.kernel_module(_KERNEL_MODULE, interpret=backend == "interpret")
    if backend == "interpret":
        with _dispatch.interpreting():
            return kmod.latent_moe_routing(*args)
    return kmod.latent_moe_routing(*args)


@_latent_moe_routing_op.register_fake
def _(logits, bias, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor):
    T, E = logits.shape
    return (
        logits.new_empty(T, top_k, dtype=torch.float32),
        logits.new_empty(T, top_k, dtype=torch.int32),
        logits.new_empty(E, dtype=torch.int32),
        logits.new_empty(T * top_k, dtype=torch.int32),
    )


def latent_moe_routing(
    logits: torch.Tensor,
    bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid router with biased, group-limited top-k selection (reference.py has the maths and tie rule).

    Args:
        logits: [T, E] router logits (fp32; other float dtypes are upcast).
        bias: [E] e_score_correction_bias (selection only).
        top_k: k experts per token; n_group / topk_group: group-limited routing (1 / 1 = off).
        norm_topk_prob: renormalise the k weights to sum 1 (+1e-20); routed_scaling_factor: then scale.
    Returns:
        weights [T, k] fp32, idx [T, k] int32 (descending choice, ties to the lower expert),
        counts [E] int32 tokens per expert, perm [T*k] int32 assignment ids (t*k + j) grouped by expert.
    """
    if logits.dim() != 2:
        raise PluginError(f"latent_moe_routing: logits must be [T, E]; got shape {tuple(logits.shape)}")
    T, E = logits.shape
    if tuple(bias.shape) != (E,):
        raise PluginError(f"latent_moe_routing: bias must be [E]={E}; got shape {tuple(bias.shape)}")
    if n_group < 1 or E % n_group or not 1 <= topk_group <= n_group:
        raise PluginError(
            f"latent_moe_routing: need n_group dividing E={E} and 1 <= topk_group <= n_group; "
            f"got n_group={n_group}, topk_group={topk_group}"
        )
    if n_group > 1 and E // n_group < 2:
        raise PluginError(
            f"latent_moe_routing: group scores need >= 2 experts per group; got E/n_group={E // n_group}"
        )
    allowed = E if n_group == 1 else topk_group * (E // n_group)
    if not 1 <= top_k <= allowed:
        raise PluginError(
            f"latent_moe_routing: top_k must be in [1, {allowed}] (experts left after group limiting); got {top_k}"
        )
    return torch.ops.trtllm_nemotron.latent_moe_routing(
        logits,
        bias,
        int(top_k),
        int(n_group),
        int(topk_group),
        bool(norm_topk_prob),
        float(routed_scaling_factor),
    )
