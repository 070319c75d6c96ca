"""The two hot ops every backend must agree on, as pure-torch references with a fixed contract.

- `mamba_decode_step`: one (or a few, sequentially) recurrent Mamba-2 steps (spec §4.3.3) on raw, pre-conv
  inputs, with conv and SSM state held in a pool and addressed by per-sequence slot indices. The z gate, the
  gated norm and out_proj stay outside (as in TensorRT-Edge-LLM), so a fused kernel
  (`plugins/mamba_state_update`) can replace this function one for one.
- `route`: DeepSeek-V3 "noaux_tc" sigmoid routing with correction bias and group-limited top-k (spec §4.4).

The network calls only these two entry points for decode and routing; the lead dispatches them to the Triton
kernels later. Both are written for clarity, not speed, and are exact in fp32 with HF transformers 5.23.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def route(
    logits_fp32: torch.Tensor,
    e_score_correction_bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] (fp32) -> (weights [T, k] fp32, idx [T, k] int64).

    scores = sigmoid(logits); selection uses scores + bias (bias only for choice); with n_group > 1 only
    the topk_group groups with the largest sum of their top-2 biased scores stay, the others are set to -inf
    (HF v5); weights are the un-biased scores of the chosen experts, renormalised (sum + 1e-20) if
    norm_topk_prob, times routed_scaling_factor. Ties follow torch.topk (order of idx is not meaningful).
    """
    logits = logits_fp32.float()
    T, E = logits.shape
    scores = logits.sigmoid()
    choice = scores + e_score_correction_bias.float()
    if n_group > 1:
        group_scores = choice.view(T, n_group, E // n_group).topk(2, dim=-1).values.sum(-1)  # [T, n_group]
        group_idx = group_scores.topk(topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        keep = keep[:, :, None].expand(T, n_group, E // n_group).reshape(T, E)
        choice = choice.masked_fill(~keep, float("-inf"))
    idx = choice.topk(top_k, dim=-1, sorted=False).indices  # [T, k]
    w = scores.gather(1, idx)
    if norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * routed_scaling_factor, idx


def mamba_decode_step(
    xBC: torch.Tensor,
    dt: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    slot_idx: torch.Tensor,
    *,
    n_groups: int,
    keep_steps: bool = False,
    dt_min: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recurrent Mamba-2 step(s) for a batch of sequences whose states live in a pool.

    Same positional contract as `plugins.mamba_state_update` (so it can dispatch there when dt_min is None).

    Args (batch rows, T new tokens per row, S pool slots):
        xBC:         [batch, T, conv_dim] raw (pre-conv) x|B|C from in_proj.
        dt:          [batch, T, H] raw dt from in_proj (before dt_bias and softplus).
        conv_state:  [S, conv_dim, K-1] last K-1 raw xBC inputs per slot; updated in place.
        ssm_state:   [S, H, P, N] SSM state per slot (float32, or float16 as a storage option; carried in
                     fp32 across the T steps and rounded once on write); updated in place.
        conv_weight: [conv_dim, K] or [conv_dim, 1, K] depthwise conv weight; conv_bias [conv_dim] or None.
        dt_bias:     [H].
        A:           [H] float32, A = -exp(A_log).
        D:           [H].
        slot_idx:    [batch] int32/int64 pool slot of each row; a negative index is a padding row: its state
                     is not touched and its output is zero. Slots must be distinct.
        n_groups:    G; head h uses B/C group h // (H/G).
        keep_steps:  also return the state after every step (speculative verification): ssm_steps
                     [batch, T, H, P, N] and conv_steps [batch, T, conv_dim, K-1] in the pool dtypes; the pool
                     ends at step T-1, and keeping the first j+1 tokens means copying step j back.
        dt_min:      clamp softplus(dt + dt_bias) from below (HF torch-fallback semantics); None = no clamp
                     (vLLM / TRT-LLM / Megatron production semantics).
    Returns:
        (y [batch, T, H*P] float32 = S_t·C_t + D·x_t, before the z gate and the gated norm;
         ssm_steps, conv_steps: as above, or empty (0,) tensors unless keep_steps).
    """
    batch, T, conv_dim = xBC.shape
    S_, H, P, N = ssm_state.shape
    assert dt.shape[-1] == H and conv_state.shape[1] == conv_dim
    w = conv_weight.reshape(conv_dim, -1).float()  # [C, K]
    K = w.shape[1]
    d_inner = H * P
    y_out = torch.zeros(batch, T, d_inner, dtype=torch.float32, device=xBC.device)
    if keep_steps:
        ssm_steps = torch.zeros(batch, T, H, P, N, dtype=ssm_state.dtype, device=xBC.device)
        conv_steps = torch.zeros(batch, T, conv_dim, K - 1, dtype=conv_state.dtype, device=xBC.device)
    else:
        ssm_steps, conv_steps = ssm_state.new_empty(0), conv_state.new_empty(0)
    valid = (slot_idx >= 0).nonzero().flatten()
    if valid.numel() == 0:
        return y_out, ssm_steps, conv_steps
    slots = slot_idx[valid].long()
    conv = conv_state[slots].float()  # [b, C, K-1]
    state = ssm_state[slots].float()  # [b, H, P, N]
    Af, Df, dtb = A.float(), D.float(), dt_bias.float()
    hpg = H // n_groups
    for t in range(T):
        window = torch.cat([conv, xBC[valid, t].float()[:, :, None]], dim=-1)  # [b, C, K]
        conv = window[:, :, 1:]
        xbc = (window * w).sum(-1)
        if conv_bias is not None:
            xbc = xbc + conv_bias.float()
        xbc = F.silu(xbc)
        x, Bm, Cm = xbc.split([d_inner, n_groups * N, n_groups * N], dim=-1)
        x = x.view(-1, H, P)
        Bm = Bm.view(-1, n_groups, N).repeat_interleave(hpg, dim=1)  # [b, H, N]
        Cm = Cm.view(-1, n_groups, N).repeat_interleave(hpg, dim=1)
        d = F.softplus(dt[valid, t].float() + dtb)  # [b, H]
        if dt_min is not None:
            d = d.clamp(min=dt_min)
        dA = torch.exp(d * Af)  # [b, H]
        state = state * dA[:, :, None, None] + (d[:, :, None] * x)[:, :, :, None] * Bm[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", state, Cm) + Df[:, None] * x
        y_out[valid, t] = y.reshape(-1, d_inner)
        if keep_steps:
            ssm_steps[valid, t] = state.to(ssm_state.dtype)
            conv_steps[valid, t] = conv.to(conv_state.dtype)
    conv_state[slots] = conv.to(conv_state.dtype)
    ssm_state[slots] = state.to(ssm_state.dtype)
    return y_out, ssm_steps, conv_steps
