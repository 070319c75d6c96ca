"""Training-time fast paths: the same maths as the reference network, cheaper autograd on CPU.

The reference MoE (`model/moe.py`) accumulates each expert's output with an out-of-place `index_add` per
expert. On CPU its forward and backward run through `scatter_add`, which dominated a training step (~40% of
an `E` layer's time at 2048 tokens). Here the routed experts run on the expert-sorted copy of the latent
activations, the outputs are put back in (token, slot) order with one gather (a permutation whose backward is the inverse
gather), and the k slots are summed with the routing weights — identical maths in fp32, only the summation
order differs (tests/embedded checks equality to 1e-5). It is passed in at construction
(`model_from_config(cfg, seed, moe_routed=routed_experts_sorted)`); parameters, names and routing are the
reference network's, so the trained `state_dict()` is a reference checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trtllm_nemotron.model.moe import MoE


class _Permute(torch.autograd.Function):
    """x[perm] for a permutation `perm` whose backward is the inverse gather (no scatter-add on CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def routed_experts_sorted(moe: MoE, r: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Σ_j w[:, j]·Expert_{idx[:, j]}(r) in fp32. r [tokens, X], w/idx [tokens, k] -> [tokens, X] fp32
    (a `model.moe.RoutedExperts`)."""
    tokens, k = idx.shape
    flat = idx.reshape(-1)  # [tokens*k]
    order = torch.argsort(flat, stable=True)  # assignments sorted by expert
    counts = torch.bincount(flat, minlength=len(moe.experts)).tolist()
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    r_sorted = _Permute.apply(r.repeat_interleave(k, dim=0), order, inverse)  # [tokens*k, X]
    outs = [moe.experts[e](chunk) for e, chunk in enumerate(r_sorted.split(counts)) if counts[e]]
    y_sorted = torch.cat(outs).float()  # [tokens*k, X]
    y = _Permute.apply(y_sorted, inverse, order).view(tokens, k, -1)  # [tokens, k, X], (token, slot) order
    return (y * w.float()[..., None]).sum(1)
