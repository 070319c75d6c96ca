"""The op contracts (`model/ops.py`) and the chunked SSD scan against explicit, loop-by-loop definitions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtllm_nemotron.model.mamba import ssd_chunked
from trtllm_nemotron.model.ops import mamba_decode_step, route


def _recurrence(x, dt, A, Bm, Cm, S0):
    """§4.3.1 sequentially in float64: S_t = exp(dt·A)·S_{t-1} + dt·x⊗B; y_t = S_t·C. Heads-expanded B/C."""
    x, dt, A, Bm, Cm, S = (t.double() for t in (x, dt, A, Bm, Cm, S0))
    ys = []
    for t in range(x.shape[1]):
        S = (
            torch.exp(dt[:, t] * A)[..., None, None] * S
            + (dt[:, t, :, None] * x[:, t])[..., None] * Bm[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Cm[:, t]))
    return torch.stack(ys, 1), S


def test_ssd_chunked_equals_recurrence_with_initial_state():
    g = torch.Generator().manual_seed(0)
    b, T, H, P, N = 2, 37, 3, 4, 5
    x = torch.randn(b, T, H, P, generator=g)
    dt = F.softplus(torch.randn(b, T, H, generator=g))
    A = -torch.rand(H, generator=g) * 2
    Bm, Cm = torch.randn(b, T, H, N, generator=g), torch.randn(b, T, H, N, generator=g)
    S0 = torch.randn(b, H, P, N, generator=g)
    y, S = ssd_chunked(x, dt, A, Bm, Cm, chunk_size=8, initial_state=S0)  # 5 chunks, last one padded
    y_ref, S_ref = _recurrence(x, dt, A, Bm, Cm, S0)
    assert (y.double() - y_ref).abs().max() < 1e-4
    assert (S.double() - S_ref).abs().max() < 1e-4
    y0, _ = ssd_chunked(x, dt, A, Bm, Cm, chunk_size=37)  # one chunk, zero initial state
    y0_ref, _ = _recurrence(x, dt, A, Bm, Cm, torch.zeros_like(S0))
    assert (y0.double() - y0_ref).abs().max() < 1e-4


def _decode_ref(xBC, dt, conv, ssm, w, bias, A, D, dt_bias, G, dt_min):
    """§4.3.3 for one row, written out token by token."""
    C, K = w.shape
    H, P, N = ssm.shape
    ys = []
    for t in range(xBC.shape[0]):
        window = torch.cat([conv, xBC[t][:, None]], dim=1)
        conv = window[:, 1:]
        xbc = F.silu((window * w).sum(1) + (bias if bias is not None else 0))
        xs = xbc[: H * P].view(H, P)
        Bg = xbc[H * P : H * P + G * N].view(G, N)
        Cg = xbc[H * P + G * N :].view(G, N)
        d = F.softplus(dt[t] + dt_bias)
        if dt_min is not None:
            d = d.clamp(min=dt_min)
        y = torch.empty(H, P)
        for h in range(H):
            g = h // (H // G)
            ssm[h] = torch.exp(d[h] * A[h]) * ssm[h] + d[h] * xs[h][:, None] * Bg[g][None, :]
            y[h] = ssm[h] @ Cg[g] + D[h] * xs[h]
        ys.append(y)
    return torch.stack(ys), conv, ssm


def test_mamba_decode_step_pool_slots_padding_and_multi_token():
    g = torch.Generator().manual_seed(1)
    H, P, N, G, K = 4, 3, 5, 2, 4
    C = H * P + 2 * G * N
    S = 5
    conv_pool = torch.randn(S, C, K - 1, generator=g)
    ssm_pool = torch.randn(S, H, P, N, generator=g)
    w, bias = torch.randn(C, 1, K, generator=g), torch.randn(C, generator=g)
    A, D, dt_bias = (
        -torch.rand(H, generator=g) - 0.1,
        torch.randn(H, generator=g),
        torch.randn(H, generator=g),
    )
    slot_idx = torch.tensor([3, -1, 0], dtype=torch.int32)
    xBC, dt = torch.randn(3, 2, C, generator=g), torch.randn(3, 2, H, generator=g) - 3
    for dt_min in (None, 0.05):
        cp, sp = conv_pool.clone(), ssm_pool.clone()
        y, ssm_steps, conv_steps = mamba_decode_step(
            xBC, dt, cp, sp, w, bias, dt_bias, A, D, slot_idx, n_groups=G, keep_steps=True, dt_min=dt_min
        )
        assert y.shape == (3, 2, H * P) and y.dtype == torch.float32
        y = y.view(3, 2, H, P)
        assert torch.equal(y[1], torch.zeros(2, H, P))  # padding row
        for untouched in (1, 2, 4):
            assert torch.equal(cp[untouched], conv_pool[untouched]) and torch.equal(
                sp[untouched], ssm_pool[untouched]
            )
        for row, slot in ((0, 3), (2, 0)):
            y_ref, conv_ref, ssm_ref = _decode_ref(
                xBC[row],
                dt[row],
                conv_pool[slot].clone(),
                ssm_pool[slot].clone(),
                w[:, 0],
                bias,
                A,
                D,
                dt_bias,
                G,
                dt_min,
            )
            assert torch.allclose(y[row], y_ref, atol=1e-5), (dt_min, row)
            assert torch.allclose(cp[slot], conv_ref) and torch.allclose(sp[slot], ssm_ref, atol=1e-5)
            assert torch.equal(ssm_steps[row, 1], sp[slot]) and torch.equal(conv_steps[row, 1], cp[slot])
            # step 0 state == the state after a T=1 call
            c1, s1 = conv_pool.clone(), ssm_pool.clone()
            mamba_decode_step(
                xBC[:, :1], dt[:, :1], c1, s1, w, bias, dt_bias, A, D, slot_idx, n_groups=G, dt_min=dt_min
            )
            assert torch.allclose(ssm_steps[row, 0], s1[slot]) and torch.equal(conv_steps[row, 0], c1[slot])
    # fp16 state storage: computed in fp32, rounded once per step
    sp16 = ssm_pool.half()
    y16, _, _ = mamba_decode_step(
        xBC, dt, conv_pool.clone(), sp16, w, bias, dt_bias, A, D, slot_idx, n_groups=G
    )
    y32, _, _ = mamba_decode_step(
        xBC, dt, conv_pool.clone(), ssm_pool.clone(), w, bias, dt_bias, A, D, slot_idx, n_groups=G
    )
    assert sp16.dtype == torch.float16 and (y16 - y32).abs().max() < 2e-2


def _route_ref(logits, bias, k, n_group, topk_group, norm, scale):
    """§4.4 one token at a time with python sorting (ties cannot occur with random floats)."""
    T, E = logits.shape
    ws, ids = [], []
    for t in range(T):
        s = torch.sigmoid(logits[t]).tolist()
        choice = [s[e] + float(bias[e]) for e in range(E)]
        per = E // n_group
        if n_group > 1:
            gscore = [sum(sorted(choice[gi * per : (gi + 1) * per])[-2:]) for gi in range(n_group)]
            keep = sorted(range(n_group), key=lambda gi: -gscore[gi])[:topk_group]
            choice = [c if e // per in keep else float("-inf") for e, c in enumerate(choice)]
        top = sorted(range(E), key=lambda e: -choice[e])[:k]
        w = [s[e] for e in top]
        if norm:
            tot = sum(w) + 1e-20
            w = [x / tot for x in w]
        ws.append([x * scale for x in w])
        ids.append(top)
    return torch.tensor(ws), torch.tensor(ids)


def test_route_matches_definition():
    g = torch.Generator().manual_seed(2)
    for E, k, n_group, topk_group, norm, scale in (
        (8, 2, 4, 2, True, 2.5),
        (16, 4, 4, 2, True, 5.0),
        (6, 3, 1, 1, False, 1.0),
    ):
        logits = torch.randn(7, E, generator=g)
        bias = 0.1 * torch.randn(E, generator=g)
        w, idx = route(
            logits,
            bias,
            top_k=k,
            n_group=n_group,
            topk_group=topk_group,
            norm_topk_prob=norm,
            routed_scaling_factor=scale,
        )
        assert w.dtype == torch.float32 and idx.dtype == torch.int64 and w.shape == idx.shape == (7, k)
        w_ref, idx_ref = _route_ref(logits, bias, k, n_group, topk_group, norm, scale)
        order, order_ref = idx.sort(-1), idx_ref.sort(-1)
        assert torch.equal(order.values, order_ref.values)
        assert torch.allclose(
            w.gather(1, order.indices), w_ref.gather(1, order_ref.indices).float(), atol=1e-6
        )
        if n_group > 1:  # every chosen expert lies in one of topk_group groups
            assert (idx // (E // n_group)).unique(dim=None).numel() <= n_group
            assert all(len(set((row // (E // n_group)).tolist())) <= topk_group for row in idx)
