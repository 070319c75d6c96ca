"""Triton-lang kernels for MoE routing. Numerics and tie rule match reference.py exactly (see launch.py).

Selection is done with k rounds of "row max, then the lowest index holding it" over a `taken` mask, which
is the reference's stable descending sort truncated to k, so ties resolve to the lower expert (or group)
index in both. Sums use `tl.reduce(..., tl.standard._sum_combine)` and maxima `_elementwise_max`: core
builtins only, so an interpreted instance of this module works whatever mode triton was imported in
(plugins/_dispatch.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plugins.latent_moe_routing.launch import perm_spec, route_spec


@triton.jit
def _rowmax(x):
    return tl.reduce(x, 1, tl.standard._elementwise_max)


@triton.jit
def _rowmin(x):
    return tl.reduce(x, 1, tl.standard._elementwise_min)


@triton.jit
def _latent_moe_routing_kernel(
    # inputs
    logits_ptr,
    bias_ptr,
    # scalars
    T,
    E,
    # outputs
    w_ptr,
    idx_ptr,
    # meta-parameters
    TOP_K: tl.constexpr,
    N_GROUP: tl.constexpr,
    TOPK_GROUP: tl.constexpr,
    NORM: tl.constexpr,
    SCALE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_e = tl.arange(0, BLOCK_E)[None, :]  # [1, BLOCK_E]
    mt = offs_t < T
    m2 = mt[:, None] & (offs_e < E)  # [BLOCK_T, BLOCK_E]
    x = tl.load(logits_ptr + offs_t[:, None].to(tl.int64) * E + offs_e, mask=m2, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-x))  # sigmoid scores [BLOCK_T, BLOCK_E]
    choice = s + tl.load(bias_ptr + offs_e, mask=offs_e < E, other=0.0).to(tl.float32)
    NEG = float("-inf")
    choice = tl.where(m2, choice, NEG)

    if N_GROUP > 1:
        gsize = E // N_GROUP
        grp = offs_e // gsize  # [1, BLOCK_E]
        offs_g = tl.arange(0, BLOCK_G)[None, :]  # [1, BLOCK_G]
        gscore = tl.full([BLOCK_T, BLOCK_G], NEG, tl.float32)
        for gi in tl.static_range(N_GROUP):
            ing = m2 & (grp == gi)
            v = tl.where(ing, choice, NEG)
            top1 = _rowmax(v)
            i1 = _rowmin(tl.where(ing & (v == top1[:, None]), offs_e, BLOCK_E))
            top2 = _rowmax(tl.where(offs_e == i1[:, None], NEG, v))
            gscore = tl.where(offs_g == gi, (top1 + top2)[:, None], gscore)
        gtaken = (offs_g >= N_GROUP) | (offs_t[:, None] < 0)  # [BLOCK_T, BLOCK_G]
        keep = offs_e < 0  # all-false [1, BLOCK_E]; broadcasts to [BLOCK_T, BLOCK_E] below
        for _ in tl.static_range(TOPK_GROUP):
            gv = tl.where(gtaken, NEG, gscore)
            gm = _rowmax(gv)
            gsel = _rowmin(tl.where((gv == gm[:, None]) & (gtaken == 0), offs_g, BLOCK_G))
            gtaken = gtaken | (offs_g == gsel[:, None])
            keep = keep | (grp == gsel[:, None])
        choice = tl.where(keep, choice, NEG)

    offs_k = tl.arange(0, BLOCK_K)[None, :]  # [1, BLOCK_K]
    taken = (m2 == 0) | (offs_t[:, None] < 0)  # padding lanes count as taken  [BLOCK_T, BLOCK_E]
    wk = tl.full([BLOCK_T, BLOCK_K], 0, tl.float32)
    ik = tl.full([BLOCK_T, BLOCK_K], 0, tl.int32)
    for j in tl.static_range(TOP_K):
        cv = tl.where(taken, NEG, choice)
        m = _rowmax(cv)
        sel = _rowmin(tl.where((cv == m[:, None]) & (taken == 0), offs_e, BLOCK_E))  # lowest index of the max
        hit = offs_e == sel[:, None]
        taken = taken | hit
        sv = tl.reduce(tl.where(hit, s, 0.0), 1, tl.standard._sum_combine)
        wk = tl.where(offs_k == j, sv[:, None], wk)
        ik = tl.where(offs_k == j, sel[:, None], ik)
    if NORM:
        wk = wk / (tl.reduce(wk, 1, tl.standard._sum_combine)[:, None] + 1e-20)
    wk = wk * SCALE
    out = offs_t[:, None].to(tl.int64) * TOP_K + offs_k
    mk = mt[:, None] & (offs_k < TOP_K)
    tl.store(w_ptr + out, wk, mask=mk)
    tl.store(idx_ptr + out, ik, mask=mk)


@triton.jit
def _expert_permutation_kernel(
    # inputs
    idx_ptr,
    # scalars
    n_assign,
    E,
    # outputs
    counts_ptr,
    perm_ptr,
    # meta-parameters
    BLOCK_A: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    offs_e = tl.arange(0, BLOCK_E)
    ar = tl.arange(0, BLOCK_A)
    counts = tl.full([BLOCK_E], 0, tl.int32)
    for start in range(0, n_assign, BLOCK_A):
        m = (start + ar) < n_assign
        e = tl.load(idx_ptr + start + ar, mask=m, other=0)
        counts += tl.histogram(e, BLOCK_E, mask=m)
    tl.store(counts_ptr + offs_e, counts, mask=offs_e < E)
    cursor = tl.associative_scan(counts, 0, tl.standard._sum_combine) - counts  # exclusive cumsum
    earlier = ar[None, :] < ar[:, None]  # [i, j]: j comes before i
    for start in range(0, n_assign, BLOCK_A):
        m = (start + ar) < n_assign
        e = tl.load(idx_ptr + start + ar, mask=m, other=0)
        same = (e[:, None] == e[None, :]) & earlier & m[None, :]
        rank = tl.reduce(same.to(tl.int32), 1, tl.standard._sum_combine)
        pos = tl.gather(cursor, e, 0) + rank
        tl.store(perm_ptr + pos, start + ar, mask=m)
        cursor += tl.histogram(e, BLOCK_E, mask=m)


def latent_moe_routing(
    logits: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher: same contract as `reference.latent_moe_routing_ref` (inputs validated by op.py)."""
    T, E = logits.shape
    logits = logits.float().contiguous()
    bias = bias.float().contiguous()
    w = torch.empty(T, top_k, dtype=torch.float32, device=logits.device)
    idx = torch.empty(T, top_k, dtype=torch.int32, device=logits.device)
    counts = torch.empty(E, dtype=torch.int32, device=logits.device)
    perm = torch.empty(T * top_k, dtype=torch.int32, device=logits.device)
    if T == 0:
        counts.zero_()
        return w, idx, counts, perm
    rs = route_spec(
        T=T,
        E=E,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=routed_scaling_factor,
    )
    _latent_moe_routing_kernel[rs.grid](
        logits, bias, *rs.scalars, w, idx, **rs.constexprs, num_warps=rs.num_warps
    )
    ps = perm_spec(T=T, E=E, top_k=top_k)
    _expert_permutation_kernel[ps.grid](
        idx, *ps.scalars, counts, perm, **ps.constexprs, num_warps=ps.num_warps
    )
    return w, idx, counts, perm
