"""Mamba-2 decode step, the specification (pure torch) for kernel.py and the TensorRT plugin.

One call advances every sequence of a batch by T tokens (T = 1 for plain decode, T > 1 to verify
speculative drafts), per spec nemotron_h.md §4.3.3:

    window = concat(conv_state, xBC_t)                 # [conv_dim, K]: the last K raw (pre-conv) inputs
    xBC    = silu(sum_k window[:, k] * w[:, k] + bias) # depthwise conv over x | B | C, then SiLU
    conv_state = window[:, 1:]
    x, B, C = split(xBC, [H*P, G*N, G*N]);  head h uses group h // (H/G)
    dt     = softplus(dt_raw + dt_bias)                # [H]   (no clamp: the production semantics, §4.3.4)
    state  = state * exp(dt * A) + (dt * x) ⊗ B        # [H, P, N]
    y      = state · C + D * x                         # [H, P]

The z gate and the gated RMSNorm stay outside (as in TensorRT-Edge-LLM's `update_ssm_state`).

Conventions (the kernel follows them exactly):
- States live in pools and are updated in place: `conv_state [pool, conv_dim, K-1]` (raw inputs, model
  dtype), `ssm_state [pool, H, P, N]` (fp32, or fp16 as an option). Row b of the batch uses pool row
  `slot_idx[b]`; a negative slot marks a padding row: its y is 0 and no state is touched.
- All arithmetic is fp32 (inputs are upcast); y is returned in fp32 (the gated norm upcasts anyway).
  The SSM state is carried in fp32 across the T steps of one call and rounded to the pool dtype when
  stored (so with an fp16 pool, one T=2 call and two T=1 calls differ by one rounding).
- `keep_steps=True` (speculative verification) also returns the state after every step:
  `ssm_steps [batch, T, H, P, N]` and `conv_steps [batch, T, conv_dim, K-1]` (pool dtypes). The pool
  ends at step T-1; to keep only the first j+1 tokens the runtime copies step j back into the pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mamba_state_update_ref(
    xbc: torch.Tensor,  # [batch, T, conv_dim]  raw in_proj output slice x|B|C (pre-conv)
    dt: torch.Tensor,  # [batch, T, H]         raw dt (before dt_bias / softplus)
    conv_state: torch.Tensor,  # [pool, conv_dim, K-1]  mutated
    ssm_state: torch.Tensor,  # [pool, H, P, N]  fp32/fp16, mutated
    conv_weight: torch.Tensor,  # [conv_dim, K]
    conv_bias: torch.Tensor,  # [conv_dim]
    dt_bias: torch.Tensor,  # [H]
    A: torch.Tensor,  # [H]  A = -exp(A_log)
    D: torch.Tensor,  # [H]
    slot_idx: torch.Tensor,  # [batch] int; < 0 = padding row
    n_groups: int,
    keep_steps: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y [batch, T, H*P] fp32, ssm_steps, conv_steps); steps are empty (0,) unless keep_steps."""
    batch, T, conv_dim = xbc.shape
    _, H, P, N = ssm_state.shape
    K = conv_weight.shape[-1]
    G = n_groups
    d_inner = H * P
    hpg = H // G
    assert conv_dim == d_inner + 2 * G * N, (conv_dim, d_inner, G, N)

    y = torch.zeros(batch, T, d_inner, dtype=torch.float32, device=xbc.device)
    if keep_steps:
        ssm_steps = torch.zeros(batch, T, H, P, N, dtype=ssm_state.dtype, device=xbc.device)
        conv_steps = torch.zeros(batch, T, conv_dim, K - 1, dtype=conv_state.dtype, device=xbc.device)
    else:
        ssm_steps = ssm_state.new_empty(0)
        conv_steps = conv_state.new_empty(0)

    valid = slot_idx >= 0  # [batch]
    if not bool(valid.any()):
        return y, ssm_steps, conv_steps
    rows = slot_idx[valid].long()  # [b'] pool rows
    seq = torch.cat([conv_state[rows].float(), xbc[valid].float().transpose(1, 2)], dim=-1)  # [b', C, K-1+T]
    S = ssm_state[rows].float()  # [b', H, P, N]
    w = conv_weight.float().reshape(conv_dim, K)
    cb = conv_bias.float()
    dts = F.softplus(dt[valid].float() + dt_bias.float())  # [b', T, H]
    Af, Df = A.float(), D.float()

    for t in range(T):
        xbc_t = F.silu((seq[:, :, t : t + K] * w).sum(-1) + cb)  # [b', C]
        xs, Bm, Cm = torch.split(xbc_t, [d_inner, G * N, G * N], dim=-1)
        xs = xs.reshape(-1, H, P)
        Bm = Bm.reshape(-1, G, N).repeat_interleave(hpg, dim=1)  # [b', H, N]
        Cm = Cm.reshape(-1, G, N).repeat_interleave(hpg, dim=1)
        dt_t = dts[:, t]  # [b', H]
        dA = torch.exp(dt_t * Af)  # [b', H]
        S = S * dA[:, :, None, None] + (dt_t[:, :, None] * xs)[..., None] * Bm[:, :, None, :]
        y_t = torch.einsum("bhpn,bhn->bhp", S, Cm) + Df[:, None] * xs  # [b', H, P]
        y[valid, t] = y_t.reshape(-1, d_inner)
        if keep_steps:
            ssm_steps[valid, t] = S.to(ssm_state.dtype)
            conv_steps[valid, t] = seq[:, :, t + 1 : t + K].to(conv_state.dtype)

    conv_state[rows] = seq[:, :, T:].to(conv_state.dtype)
    ssm_state[rows] = S.to(ssm_state.dtype)
    return y, ssm_steps, conv_steps
