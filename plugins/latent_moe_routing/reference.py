"""MoE router (DeepSeek-V3 "noaux_tc", Nemotron-H §4.4), the specification for kernel.py and the plugins.

    scores = sigmoid(logits)                       # [T, E] fp32
    choice = scores + e_score_correction_bias      # used ONLY to select experts
    if n_group > 1:                                # group-limited: keep the topk_group best groups,
        group score = sum of the group's top-2 choice values; other groups' experts -> -inf
    idx = top-k of choice                          # [T, k]
    w   = scores[idx]  (un-biased);  w /= sum(w) + 1e-20 if norm_topk_prob;  w *= routed_scaling_factor

Tie rule (HF's torch.topk leaves it unspecified; we define it and the kernel matches it exactly): among
equal values the LOWER index wins, for groups and for experts. `idx` is ordered by descending choice
(ties by ascending expert), which is what a stable descending sort gives.

For the grouped expert GEMM the op also returns, over the T*k (token, slot) assignments a = t*k + j:
    counts [E] int32   tokens routed to each expert
    perm   [T*k] int32 assignment ids grouped by expert (expert 0's first), ascending a within an expert;
                       expert e's rows are perm[offsets[e] : offsets[e] + counts[e]], offsets = cumsum - counts,
                       its tokens perm // k and their weights w.flatten()[perm].
"""

from __future__ import annotations

import torch


def latent_moe_routing_ref(
    logits: torch.Tensor,  # [T, E] router logits (fp32)
    bias: torch.Tensor,  # [E] e_score_correction_bias
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (weights [T, k] fp32, idx [T, k] int32, counts [E] int32, perm [T*k] int32)."""
    T, E = logits.shape
    scores = logits.float().sigmoid()  # [T, E]
    choice = scores + bias.float()  # [T, E]
    if n_group > 1:
        grouped = choice.view(T, n_group, E // n_group)  # [T, n_group, E/n_group]
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [T, n_group]; top-2 sum is tie-independent
        gidx = torch.sort(group_scores, dim=-1, descending=True, stable=True).indices[:, :topk_group]
        keep = torch.zeros(T, n_group, dtype=torch.bool, device=logits.device).scatter_(1, gidx, True)
        choice = choice.masked_fill(~keep.repeat_interleave(E // n_group, dim=1), float("-inf"))
    idx = torch.sort(choice, dim=-1, descending=True, stable=True).indices[:, :top_k]  # [T, k]
    w = scores.gather(1, idx)  # [T, k]
    if norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    w = w * routed_scaling_factor
    flat = idx.flatten()  # [T*k] expert of assignment a = t*k + j
    counts = torch.bincount(flat, minlength=E).to(torch.int32)  # [E]
    perm = torch.sort(flat, stable=True).indices.to(torch.int32)  # [T*k]
    return w, idx.to(torch.int32), counts, perm
