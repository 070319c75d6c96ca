"""Triton-lang kernel for the Mamba-2 decode step. Numerics match reference.py (fp32 arithmetic).

Grid (batch, H, cdiv(P, BLOCK_P)), as mamba_ssm's selective_state_update: one program per (sequence b,
head h, block of BLOCK_P head channels); see launch.py for the argument order. Per program:
    state <- ssm_state_in[slot, h, p-block]                          # [BLOCK_P, N] fp32 registers
    for t < T:
        x  = silu(conv over window t of the block's x channels)      # [BLOCK_P]
        B, C = silu(conv over window t of group g's B/C channels)     # [N] (recomputed per program)
        dt = softplus(dt_raw[b, t, h] + dt_bias[h])
        state = state * exp(dt * A[h]) + (dt * x) ⊗ B ;  y[b, t, h, p-block] = state · C + D[h] * x
        (KEEP_STEPS) ssm_steps[b, t, h, p-block] = state ; conv_steps[b, t, x channels] = window t+1
    ssm_state_out[slot, h, p-block] = state ; conv_state_out[slot, x channels] = last K-1 inputs
    the program (first head of group g, p-block 0) also shifts group g's B/C conv channels.
Every conv window is read from `window` = conv_state[slot_idx] ([batch, conv_dim, K-1], gathered before
the launch), never from the pool being written: the B/C channels are read by all H/G heads' programs, and
with the pool updated in place a program could otherwise read a row another program already shifted.
The window at step t is position t..t+K-1 of seq = [window (K-1) | xbc tokens (T)]; `_window` reads one
position with two masked loads, so no copy of it is made. Padding rows (slot < 0) mask every state access
and write y = 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plugins.mamba_state_update.launch import launch_spec
from trtllm_nemotron.errors import PluginError


# Only core builtins (tl.load, tl.exp, tl.reduce, ...) and jit functions of THIS file are called: the
# stdlib's jit helpers (tl.sum, tl.sigmoid, ...) are decorated once when triton is imported, and would be
# compiled-only JITFunctions inside an interpreted instance of this module (see plugins/_dispatch.py).
# Sums are `tl.reduce(x, axis, tl.standard._sum_combine)`: the interpreter recognises that combine
# function and uses numpy without calling it; the compiler inlines it as usual.
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _window(
    xbc_ptr,
    cs_ptr,
    xbc_row,
    cs_row,
    chan,
    mask,
    start,
    conv_dim,
    WIDTH: tl.constexpr,
    K: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """seq[chan, start + j] for j < WIDTH as a [len(chan), BLOCK_K] fp32 tile (0 elsewhere and where ~mask),
    with seq = [conv_state[slot] (K-1 positions) | xbc[b] tokens]: two masked loads, no copy."""
    j = tl.arange(0, BLOCK_K)[None, :]
    pos = start + j  # [1, BLOCK_K] (a tensor: the interpreter mishandles tensor & scalar-bool masks)
    m = mask[:, None] & (j < WIDTH)
    v_s = tl.load(cs_ptr + cs_row + chan[:, None] * (K - 1) + pos, mask=m & (pos < K - 1), other=0.0)
    v_x = tl.load(
        xbc_ptr + xbc_row + (pos - (K - 1)) * conv_dim + chan[:, None], mask=m & (pos >= K - 1), other=0.0
    )
    return v_s.to(tl.float32) + v_x.to(tl.float32)


@triton.jit
def _conv_silu(
    xbc_ptr, cs_ptr, xbc_row, cs_row, chan, mask, t, conv_dim, w, bias, K: tl.constexpr, BLOCK_K: tl.constexpr
):
    """silu(bias + sum_k w[:, k] * seq[chan, t + k]) in fp32; w [len(chan), BLOCK_K], bias [len(chan)]."""
    win = _window(xbc_ptr, cs_ptr, xbc_row, cs_row, chan, mask, t, conv_dim, K, K, BLOCK_K)
    acc = bias + tl.reduce(win * w, 1, tl.standard._sum_combine)
    return acc * _sigmoid(acc)


@triton.jit
def _store_window(
    xbc_ptr,
    cs_ptr,
    xbc_row,
    cs_row,
    chan,
    mask,
    start,
    conv_dim,
    out_ptr,
    out_row,
    out_mask,
    K: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[out_row + chan*(K-1) + j] = seq[chan, start + j] for j < K-1 (raw values, out dtype).
    Loads use `mask` (false on padding rows, giving 0), stores `out_mask`."""
    win = _window(xbc_ptr, cs_ptr, xbc_row, cs_row, chan, mask, start, conv_dim, K - 1, K, BLOCK_K)
    j = tl.arange(0, BLOCK_K)[None, :]
    tl.store(
        out_ptr + out_row + chan[:, None] * (K - 1) + j,
        win.to(out_ptr.dtype.element_ty),
        mask=out_mask[:, None] & (j < K - 1),
    )


@triton.jit
def _load_conv_params(w_ptr, b_ptr, chan, mask, K: tl.constexpr, BLOCK_K: tl.constexpr):
    j = tl.arange(0, BLOCK_K)[None, :]
    w = tl.load(w_ptr + chan[:, None] * K + j, mask=mask[:, None] & (j < K), other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + chan, mask=mask, other=0.0).to(tl.float32)
    return w, bias


@triton.jit
def _mamba_state_update_kernel(
    # inputs
    xbc_ptr,
    dt_ptr,
    conv_w_ptr,
    conv_b_ptr,
    dt_bias_ptr,
    A_ptr,
    D_ptr,
    slot_ptr,
    conv_in_ptr,
    ssm_in_ptr,
    win_ptr,
    # scalars
    T,
    H,
    P,
    N,
    G,
    conv_dim,
    # outputs
    y_ptr,
    conv_out_ptr,
    ssm_out_ptr,
    ssm_steps_ptr,
    conv_steps_ptr,
    # meta-parameters
    K: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KEEP_STEPS: tl.constexpr,
):
    # conv_in_ptr is the pool conv_out_ptr aliases (TensorRT's in-place input); every conv read goes to the
    # per-sequence snapshot win_ptr [batch, conv_dim, K-1], so no program reads what another one writes.
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    hpg = H // G
    g = h // hpg
    d_inner = H * P
    slot = tl.load(slot_ptr + b).to(tl.int64)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_in = offs_p < P
    mp = p_in & ((offs_p * 0 + slot) >= 0)  # (tensor compares: see _window)
    mn = (offs_n < N) & ((offs_n * 0 + slot) >= 0)
    m_pn = mp[:, None] & mn[None, :]
    m_pn_all = p_in[:, None] & (offs_n < N)[None, :]
    xbc_row = b * T * conv_dim
    win_row = b * conv_dim * (K - 1)
    cs_row = slot * conv_dim * (K - 1)
    x_chan = h * P + offs_p
    b_chan = d_inner + g * N + offs_n  # this head's group's B channels
    c_chan = d_inner + G * N + g * N + offs_n  # and C channels
    wx, bx = _load_conv_params(conv_w_ptr, conv_b_ptr, x_chan, mp, K, BLOCK_K)
    wb, bb = _load_conv_params(conv_w_ptr, conv_b_ptr, b_chan, mn, K, BLOCK_K)
    wc, bc = _load_conv_params(conv_w_ptr, conv_b_ptr, c_chan, mn, K, BLOCK_K)
    state_tile = offs_p[:, None] * N + offs_n[None, :]
    st_off = (slot * H + h) * P * N
    state = tl.load(ssm_in_ptr + st_off + state_tile, mask=m_pn, other=0.0).to(tl.float32)
    A_h = tl.load(A_ptr + h).to(tl.float32)
    D_h = tl.load(D_ptr + h).to(tl.float32)
    dtb_h = tl.load(dt_bias_ptr + h).to(tl.float32)
    for t in range(0, T):
        xs = _conv_silu(xbc_ptr, win_ptr, xbc_row, win_row, x_chan, mp, t, conv_dim, wx, bx, K, BLOCK_K)
        Bv = _conv_silu(xbc_ptr, win_ptr, xbc_row, win_row, b_chan, mn, t, conv_dim, wb, bb, K, BLOCK_K)
        Cv = _conv_silu(xbc_ptr, win_ptr, xbc_row, win_row, c_chan, mn, t, conv_dim, wc, bc, K, BLOCK_K)
        dt = tl.load(dt_ptr + (b * T + t) * H + h).to(tl.float32) + dtb_h
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))  # softplus, torch threshold
        dA = tl.exp(dt * A_h)
        state = state * dA + (dt * xs)[:, None] * Bv[None, :]
        y = tl.reduce(state * Cv[None, :], 1, tl.standard._sum_combine) + D_h * xs
        tl.store(y_ptr + (b * T + t) * d_inner + x_chan, tl.where(mp, y, 0.0), mask=p_in)
        if KEEP_STEPS:
            # steps rows of padding slots are written too (zeros: every load above was masked)
            step_off = ((b * T + t) * H + h) * P * N
            tl.store(
                ssm_steps_ptr + step_off + state_tile, state.to(ssm_steps_ptr.dtype.element_ty), mask=m_pn_all
            )
            _store_window(
                xbc_ptr,
                win_ptr,
                xbc_row,
                win_row,
                x_chan,
                mp,
                t + 1,
                conv_dim,
                conv_steps_ptr,
                (b * T + t) * conv_dim * (K - 1),
                p_in,
                K,
                BLOCK_K,
            )
    tl.store(ssm_out_ptr + st_off + state_tile, state.to(ssm_out_ptr.dtype.element_ty), mask=m_pn)
    _store_window(
        xbc_ptr, win_ptr, xbc_row, win_row, x_chan, mp, T, conv_dim, conv_out_ptr, cs_row, mp, K, BLOCK_K
    )

    # B and C conv channels of the group: one program per group shifts them (reads come from the snapshot)
    if (h % hpg == 0) & (pb == 0):
        if KEEP_STEPS:
            for t in range(0, T):
                steps_row = (b * T + t) * conv_dim * (K - 1)
                _store_window(
                    xbc_ptr,
                    win_ptr,
                    xbc_row,
                    win_row,
                    b_chan,
                    mn,
                    t + 1,
                    conv_dim,
                    conv_steps_ptr,
                    steps_row,
                    offs_n < N,
                    K,
                    BLOCK_K,
                )
                _store_window(
                    xbc_ptr,
                    win_ptr,
                    xbc_row,
                    win_row,
                    c_chan,
                    mn,
                    t + 1,
                    conv_dim,
                    conv_steps_ptr,
                    steps_row,
                    offs_n < N,
                    K,
                    BLOCK_K,
                )
        _store_window(
            xbc_ptr, win_ptr, xbc_row, win_row, b_chan, mn, T, conv_dim, conv_out_ptr, cs_row, mn, K, BLOCK_K
        )
        _store_window(
            xbc_ptr, win_ptr, xbc_row, win_row, c_chan, mn, T, conv_dim, conv_out_ptr, cs_row, mn, K, BLOCK_K
        )


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def mamba_state_update(
    xbc: torch.Tensor,
    dt: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    slot_idx: torch.Tensor,
    n_groups: int,
    keep_steps: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher: same contract as `reference.mamba_state_update_ref` (inputs already validated by op.py)."""
    batch, T, conv_dim = xbc.shape
    _, H, P, N = ssm_state.shape
    K = conv_weight.shape[-1]
    for name, t in (("conv_state", conv_state), ("ssm_state", ssm_state)):
        if not t.is_contiguous():
            raise PluginError(f"{name} must be contiguous (it is updated in place); got strides {t.stride()}")
    if conv_state.dtype != xbc.dtype:
        raise PluginError(f"conv_state dtype {conv_state.dtype} must equal the xbc dtype {xbc.dtype}")
    xbc, dt = xbc.contiguous(), dt.to(xbc.dtype).contiguous()
    w = conv_weight.reshape(conv_dim, K).contiguous()
    cb = conv_bias.to(w.dtype).contiguous()
    dt_bias, A, D = (v.float().contiguous() for v in (dt_bias, A, D))
    slot = slot_idx.to(torch.int32).contiguous()
    window = conv_state.index_select(0, slot.clamp(min=0).long())  # [batch, conv_dim, K-1] snapshot
    spec = launch_spec(
        batch=batch,
        T=T,
        H=H,
        P=P,
        N=N,
        G=n_groups,
        K=K,
        keep_steps=keep_steps,
        act_dtype=_dtype_name(xbc),
        weight_dtype=_dtype_name(w),
        state_dtype=_dtype_name(ssm_state),
    )
    y = torch.empty(batch, T, H * P, dtype=torch.float32, device=xbc.device)
    if keep_steps:
        ssm_steps = torch.empty(batch, T, H, P, N, dtype=ssm_state.dtype, device=xbc.device)
        conv_steps = torch.empty(batch, T, conv_dim, K - 1, dtype=conv_state.dtype, device=xbc.device)
        steps_args = (ssm_steps, conv_steps)
    else:
        ssm_steps, conv_steps = ssm_state.new_empty(0), conv_state.new_empty(0)
        steps_args = (ssm_state, conv_state)  # unused (KEEP_STEPS=False): any pointer of the right type
    if batch == 0:
        return y, ssm_steps, conv_steps
    _mamba_state_update_kernel[spec.grid](
        xbc,
        dt,
        w,
        cb,
        dt_bias,
        A,
        D,
        slot,
        conv_state,
        ssm_state,
        window,
        *spec.scalars,
        y,
        conv_state,
        ssm_state,
        *steps_args,
        **spec.constexprs,
        num_warps=spec.num_warps,
    )
    return y, ssm_steps, conv_steps
