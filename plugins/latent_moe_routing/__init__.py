"""`trtllm_nemotron::latent_moe_routing`: DeepSeek-V3 "noaux_tc" router (sigmoid, biased group-limited top-k).

reference.py is the specification; kernel.py the Triton-lang kernels; launch.py the launch rules shared
by the torch launcher and the TensorRT AOT plugins; op.py the torch custom op; trt.py the TensorRT plugins.
Nothing here imports triton or tensorrt. The public entry point is `plugins.latent_moe_routing.latent_moe_routing`
(`from plugins.latent_moe_routing import latent_moe_routing`), a lazy wrapper of op.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
    """MoE routing; see `plugins.latent_moe_routing.op.latent_moe_routing` for the contract."""
    from plugins.latent_moe_routing.op import latent_moe_routing as _impl

    return _impl(
        logits,
        bias,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=routed_scaling_factor,
    )
