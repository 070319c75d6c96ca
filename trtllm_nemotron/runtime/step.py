"""The decode / verify step: a few new tokens per sequence slot, batched, on the network's own weights.

Why not call the modules: the reference MoE sorts tokens by expert with a data-dependent Python loop, and the
reference Mamba step commits its state at once. A decode step must (a) be one straight-line function of
tensors, so `torch.compile` can capture it as one graph (per-token Python overhead dominates at small sizes),
and (b) for MTP verification, keep the Mamba state after *every* one of the T = 1 + max_draft_len tokens so
that the state of the last accepted position can be committed afterwards (TRT-LLM's `intermediate_ssm` /
`intermediate_conv_window`, the plugin's multi-token mode). Prefill stays on the reference network (chunked
SSD scan).

`FlatWeights` reads the module weights once (experts stacked into [E, F, X] / [E, X, F] tensors and the
module parameters re-pointed at views of the stack, so the weights are held once). `forward_step` is the
step itself:

    ids [batch, T] at positions start[b] .. start[b]+T-1 of cache rows `rows` [batch]
    -> final-normed hidden [batch, T, hidden], and with record=True, per Mamba layer the raw conv window
       [batch, conv_dim, K-1+T] and the SSM states after each token [batch, T, H, P, N] (state not written);
       with record=False the Mamba state is written back in place. Attention KV is always written at the
       token positions (rolling back = setting the length).

Routed experts, by size (all give y [tokens, k, X], summed over k in fp32 the same way): few tokens gather
the chosen experts (as a fused reduction for big experts); many tokens with small experts run every expert
on every token as batched GEMMs; many tokens with big experts are grouped by expert (`_experts_grouped`,
eager, between compiled segments: its shapes depend on the routing).

`commit_mamba` writes the recorded state of position `accept[b]` back into the pool. The maths follow the
reference ops exactly (spec §4.2, §4.3.3, §4.4-4.6); only the order of fp32 additions may differ.

Plugin ops: whenever the kernels are meant to run -- CUDA tensors, or TRTLLM_NEMOTRON_KERNELS=interpret
(`plugins._dispatch`) -- the Mamba conv + recurrence goes through `plugins.mamba_state_update` (its
multi-token `keep_steps` mode records the per-token states for MTP verification) and the MoE routing
through `plugins.latent_moe_routing`, each wrapped in `torch.compiler.disable` (run eagerly between
compiled graph segments). On CPU by default (the reference backend) the step keeps the inline torch
versions below: the plugin op is opaque to inductor, so calling it would split the compiled step into
segments and cost the fusion that makes the compiled CPU step fast, for the same maths as the reference.
Inside a compiled graph the choice is by device only (CUDA: plugin); eager steps also honour the env var.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import plugins
from plugins import _dispatch
from trtllm_nemotron.model.norms import gated_rms_norm, rms_norm


@dataclass
class _Layer:
    char: str
    cache_idx: int  # key of this layer's state in its HybridCache
    norm_w: torch.Tensor
    eps: float
    w: dict[str, Any]  # weights, and None for absent biases
    meta: dict


def _lin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, w, b)


class FlatWeights:
    """The weights of a backbone (or the MTP block) as plain tensors, per layer."""

    def __init__(self, model, *, mtp: bool = False) -> None:
        cfg = model.config
        self.cfg = cfg
        self.eps = cfg.layer_norm_epsilon
        mods = model.mtp.layers if mtp else model.backbone.layers
        self.layers = [self._flatten(i, m) for i, m in enumerate(mods)]
        self.embed = model.backbone.embeddings.weight
        self.norm_f = model.backbone.norm_f.weight
        self.lm_head = model.backbone.embeddings.weight if model.lm_head is None else model.lm_head.weight
        if mtp:
            first, last = model.mtp.layers[0], model.mtp.layers[len(cfg.mtp_pattern) - 1]
            self.enorm, self.hnorm = first.enorm.weight, first.hnorm.weight
            self.eh_proj = first.eh_proj.weight
            self.final_norm = last.final_layernorm.weight

    def _flatten(self, i: int, block) -> _Layer:
        m = block.mixer
        ch = block.char
        if ch == "M":
            w = {
                "in_proj": m.in_proj.weight,
                "in_bias": m.in_proj.bias,
                "conv_w": m.conv1d.weight.reshape(m.conv_dim, m.K),
                "conv_b": m.conv1d.bias,
                "A_log": m.A_log,
                "D": m.D,
                "dt_bias": m.dt_bias,
                "norm": m.norm.weight,
                "out_proj": m.out_proj.weight,
                "out_bias": m.out_proj.bias,
            }
            dt_min = m.time_step_min if m.clamp_dt_min is True else None
            meta = {
                "H": m.H,
                "P": m.P,
                "G": m.G,
                "N": m.N,
                "K": m.K,
                "d_inner": m.d_inner,
                "conv_dim": m.conv_dim,
                "dt_min": dt_min,
                "group": m.norm.group_size,
            }
        elif ch == "*":
            w = {n: getattr(m, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
            w.update({n + "_b": getattr(m, n).bias for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
            meta = {"nh": m.nh, "nkv": m.nkv, "hd": m.hd}
        elif ch == "E":
            w = {
                "gate": m.gate.weight,
                "bias": m.gate.e_score_correction_bias,
                "up": _stack_experts(m, "up_proj"),
                "down": _stack_experts(m, "down_proj"),
                "fc1": m.fc1_latent_proj.weight if m.latent else None,
                "fc2": m.fc2_latent_proj.weight if m.latent else None,
                "sh_up": m.shared_experts.up_proj.weight if m.shared_experts is not None else None,
                "sh_down": m.shared_experts.down_proj.weight if m.shared_experts is not None else None,
            }
            g = m.gate
            meta = {
                "top_k": g.top_k,
                "n_group": g.n_group,
                "topk_group": g.topk_group,
                "norm_topk_prob": g.norm_topk_prob,
                "scale": g.routed_scaling_factor,
            }
            if any(e.up_proj.bias is not None for e in m.experts):
                raise NotImplementedError(
                    "expert biases (mlp_bias=True) are not supported by the runtime step"
                )
        elif ch == "-":
            w = {
                "up": m.up_proj.weight,
                "up_b": m.up_proj.bias,
                "down": m.down_proj.weight,
                "down_b": m.down_proj.bias,
            }
            meta = {}
        else:  # pragma: no cover - the config validates the pattern
            raise ValueError(ch)
        return _Layer(ch, i, block.norm.weight, block.norm.eps, w, meta)


@torch.no_grad()
def _stack_experts(moe, proj: str) -> torch.Tensor:
    """[E, out, in] stack of the experts' `proj` weights; the module parameters become views of it."""
    ws = [getattr(e, proj).weight for e in moe.experts]
    stack = torch.stack([w.detach() for w in ws])
    for e, expert in enumerate(moe.experts):
        getattr(expert, proj).weight.data = stack[e]
    return stack


def _attention(L: _Layer, x, kv, rows, pos, n_ctx: int):
    """x [batch, T, hidden]; pos [batch, T] absolute positions; attends to the first n_ctx cache positions."""
    batch, T, _ = x.shape
    nh, nkv, hd = L.meta["nh"], L.meta["nkv"], L.meta["hd"]
    w = L.w
    q = _lin(x, w["q_proj"], w["q_proj_b"]).view(batch, T, nh, hd).transpose(1, 2)  # [batch, nh, T, hd]
    k = _lin(x, w["k_proj"], w["k_proj_b"]).view(batch, T, nkv, hd)
    v = _lin(x, w["v_proj"], w["v_proj_b"]).view(batch, T, nkv, hd)
    kc, vc = kv
    r = rows[:, None]
    kc[r, :, pos] = k.to(kc.dtype)  # [batch, T, nkv, hd] at (row, :, pos)
    vc[r, :, pos] = v.to(vc.dtype)
    keys = kc[rows, :, :n_ctx].to(q.dtype)  # [batch, nkv, n_ctx, hd]
    vals = vc[rows, :, :n_ctx].to(q.dtype)
    mask = torch.arange(n_ctx, device=x.device)[None, None, :] <= pos[:, :, None]  # [batch, T, n_ctx]
    o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask[:, None], enable_gqa=nh != nkv)
    return _lin(o.transpose(1, 2).reshape(batch, T, nh * hd), w["o_proj"], w["o_proj_b"])


def _mamba(L: _Layer, x, conv_state, ssm_state, rows, record: bool):
    """x [batch, T, hidden] -> (out [batch, T, hidden], record or None)."""
    batch, T, _ = x.shape
    m, w = L.meta, L.w
    H, P, G, N, K = m["H"], m["P"], m["G"], m["N"], m["K"]
    d_inner, conv_dim = m["d_inner"], m["conv_dim"]
    z, xBC, dt = _lin(x, w["in_proj"], w["in_bias"]).split([d_inner, conv_dim, H], dim=-1)
    if (
        m["dt_min"] is None  # the plugin has no dt clamp (production semantics)
        and conv_state.dtype == xBC.dtype
        and _use_plugin("mamba_state_update", x)
    ):
        y, rec = _mamba_plugin(L, xBC, dt, conv_state, ssm_state, rows, record)
        y = gated_rms_norm(y.reshape(batch, T, d_inner), z, w["norm"], m["group"], L.eps)
        return _lin(y.to(x.dtype), w["out_proj"], w["out_bias"]), rec
    window = torch.cat([conv_state[rows].to(xBC.dtype), xBC.transpose(1, 2)], dim=-1)  # [batch, C, K-1+T]
    cw = w["conv_w"].float()  # [C, K]
    cols = [(window[:, :, t : t + K].float() * cw).sum(-1) for t in range(T)]  # T x [batch, C]
    xc = torch.stack(cols, dim=1)  # [batch, T, C] fp32
    if w["conv_b"] is not None:
        xc = xc + w["conv_b"].float()
    xc = F.silu(xc)
    xs, Bm, Cm = xc.split([d_inner, G * N, G * N], dim=-1)
    xs = xs.view(batch, T, H, P)
    hpg = H // G
    Bm = Bm.view(batch, T, G, N).repeat_interleave(hpg, dim=2)  # [batch, T, H, N]
    Cm = Cm.view(batch, T, G, N).repeat_interleave(hpg, dim=2)
    d = F.softplus(dt.float() + w["dt_bias"].float())  # [batch, T, H]
    if m["dt_min"] is not None:
        d = d.clamp(min=m["dt_min"])
    A = -torch.exp(w["A_log"].float())
    dA = torch.exp(d * A)  # [batch, T, H]
    Df = w["D"].float()
    state = ssm_state[rows].float()  # [batch, H, P, N]
    ys, states = [], []
    for t in range(T):
        state = (
            state * dA[:, t, :, None, None] + (d[:, t, :, None] * xs[:, t])[..., None] * Bm[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Cm[:, t]) + Df[:, None] * xs[:, t])
        if record:
            states.append(state)
    y = torch.stack(ys, dim=1).reshape(batch, T, d_inner)  # fp32
    y = gated_rms_norm(y, z, w["norm"], m["group"], L.eps)
    out = _lin(y.to(x.dtype), w["out_proj"], w["out_bias"])
    if record:
        return out, (window, torch.stack(states, dim=1))
    conv_state[rows] = window[:, :, T:].to(conv_state.dtype)
    ssm_state[rows] = state.to(ssm_state.dtype)
    return out, None


def _use_plugin(op: str, x: torch.Tensor) -> bool:
    """True when the plugin op's kernel is meant to run for tensors like x: CUDA tensors, or
    TRTLLM_NEMOTRON_KERNELS=interpret. Inside a compiled graph the choice is by device only (static)."""
    if torch.compiler.is_compiling():
        return x.is_cuda
    return _dispatch.backend_for(op, x.device.type) != "reference"


@torch.compiler.disable
def _mamba_plugin(L: _Layer, xBC, dt, conv_state, ssm_state, rows, record: bool):
    """Conv + SSM recurrence through `plugins.mamba_state_update` -> (y [batch, T, H*P] fp32, record or None).

    record=True: the plugin runs on scratch copies of the pool rows (its multi-token mode still advances the
    state it is given), so the pool is untouched; the record is (raw window [batch, C, K-1+T] as the inline
    path builds it, ssm_steps [batch, T, H, P, N]) for `commit_mamba`. record=False: pool rows updated in place.
    """
    m, w = L.meta, L.w
    A = -torch.exp(w["A_log"].float())
    if record:
        conv0 = conv_state[rows]  # copies (advanced indexing)
        window = torch.cat([conv0.to(xBC.dtype), xBC.transpose(1, 2)], dim=-1)
        slots = torch.arange(rows.shape[0], device=rows.device)
        y, ssm_steps, _ = plugins.mamba_state_update(
            xBC.contiguous(), dt.contiguous(), conv0, ssm_state[rows], w["conv_w"], w["conv_b"],
            w["dt_bias"], A, w["D"], slots, n_groups=m["G"], keep_steps=True,
        )  # fmt: skip
        return y, (window, ssm_steps)
    y, _, _ = plugins.mamba_state_update(
        xBC.contiguous(), dt.contiguous(), conv_state, ssm_state, w["conv_w"], w["conv_b"],
        w["dt_bias"], A, w["D"], rows, n_groups=m["G"], keep_steps=False,
    )  # fmt: skip
    return y, None


@torch.compiler.disable
def _route_plugin(
    logits, bias, top_k: int, n_group: int, topk_group: int, norm_topk_prob: bool, scale: float
):
    """`_route` through `plugins.latent_moe_routing` (idx as int64 for indexing)."""
    w, idx, _, _ = plugins.latent_moe_routing(
        logits.contiguous(), bias, top_k=top_k, n_group=n_group, topk_group=topk_group,
        norm_topk_prob=norm_topk_prob, routed_scaling_factor=scale,
    )  # fmt: skip
    return w, idx.long()


def _route(logits, bias, top_k: int, n_group: int, topk_group: int, norm_topk_prob: bool, scale: float):
    """DeepSeek-V3 noaux_tc routing (spec §4.4) in plain torch ops, so inductor fuses it into the step (the
    network calls the `latent_moe_routing` plugin op, opaque to the compiler). logits [n, E] fp32 ->
    (weights [n, k] fp32, idx [n, k])."""
    if _use_plugin("latent_moe_routing", logits):
        return _route_plugin(logits, bias, top_k, n_group, topk_group, norm_topk_prob, scale)
    n, E = logits.shape
    scores = logits.sigmoid()
    choice = scores + bias.float()
    if n_group > 1:
        group_scores = choice.view(n, n_group, E // n_group).topk(2, dim=-1).values.sum(-1)  # [n, n_group]
        group_idx = group_scores.topk(topk_group, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        choice = choice.masked_fill(
            ~keep[:, :, None].expand(n, n_group, E // n_group).reshape(n, E), float("-inf")
        )
    idx = choice.topk(top_k, dim=-1).indices  # [n, k]
    w = scores.gather(1, idx)
    if norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * scale, idx


GATHER_REDUCTION_MIN = 2**16  # expert size (F x X elements) from which the gather path is a fused reduction
DENSE_MOE_MACS = 2**24  # above this, running every expert on every token costs more than grouping by expert


@torch.compiler.disable
def _experts_grouped(
    r: torch.Tensor, idx: torch.Tensor, up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """y [n, k, X]: expert idx[t, j] applied to r[t], computed as one GEMM pair per expert over the tokens
    routed to it (only the chosen pairs are computed). Runs eagerly (its shapes depend on the routing), so a
    compiled step calls it between graph segments."""
    n, k = idx.shape
    flat = idx.reshape(-1)  # [n*k]
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=up.shape[0]).tolist()
    y = r.new_empty(n * k, up.shape[2])
    start = 0
    for e, c in enumerate(counts):
        if c:
            sel = order[start : start + c]
            h = F.relu(F.linear(r[sel // k], up[e])).square()  # [c, F]
            y[sel] = F.linear(h, down[e])
            start += c
    return y.view(n, k, -1)


def _moe(L: _Layer, x):
    """x [batch, T, hidden] -> [batch, T, hidden]; routed experts gathered from the stacked weights."""
    shape = x.shape
    xf = x.reshape(-1, shape[-1])  # [n, hidden]
    w, m = L.w, L.meta
    logits = F.linear(xf.float(), w["gate"].float())
    wts, idx = _route(
        logits, w["bias"], m["top_k"], m["n_group"], m["topk_group"], m["norm_topk_prob"], m["scale"]
    )  # [n, k]
    r = _lin(xf, w["fc1"]) if w["fc1"] is not None else xf  # [n, X]
    n, k = idx.shape
    E = w["up"].shape[0]
    if n * k < E and w["up"].shape[1] * w["up"].shape[2] >= GATHER_REDUCTION_MIN:
        # few tokens, big experts: the chosen experts' rows times the input, written as a reduction so that
        # the compiler fuses the indexing into the dot products (weights read once, never copied; measured
        # +10% decode speed on the 190M benchmark model, nothing to gain on the 5.5M embedded one)
        h = F.relu((w["up"][idx] * r[:, None, None, :]).sum(-1)).square()  # [n, k, F]
        y = (w["down"][idx] * h[:, :, None, :]).sum(-1)  # [n, k, X]
    elif n * k < E:  # few tokens: gather the chosen experts' weights (reads k experts per token)
        up = w["up"][idx]  # [n, k, F, X]
        h = F.relu(torch.einsum("nkfx,nx->nkf", up, r)).square()
        down = w["down"][idx]  # [n, k, X, F]
        y = torch.einsum("nkxf,nkf->nkx", down, h)  # [n, k, X]
    elif E * n * w["up"].shape[1] * w["up"].shape[2] <= DENSE_MOE_MACS:
        # many tokens, small experts: every expert over every token as batched GEMMs (each expert read once)
        h = F.relu(torch.matmul(r, w["up"].transpose(1, 2))).square()  # [E, n, F]
        y_all = torch.matmul(h, w["down"].transpose(1, 2))  # [E, n, X]
        y = y_all[idx, torch.arange(n, device=x.device)[:, None]]  # [n, k, X]
    else:  # many tokens, big experts: group the (token, expert) pairs by expert (data-dependent, eager)
        y = _experts_grouped(r, idx, w["up"], w["down"])
    acc = (y.float() * wts[..., None]).sum(1)  # [n, X] fp32
    routed = acc.to(x.dtype)
    if w["fc2"] is not None:
        routed = _lin(routed, w["fc2"])
    out = routed.view(shape)
    if w["sh_up"] is not None:
        out = out + _lin(F.relu(_lin(x, w["sh_up"])).square(), w["sh_down"])
    return out


def _mlp(L: _Layer, x):
    w = L.w
    return _lin(F.relu(_lin(x, w["up"], w["up_b"])).square(), w["down"], w["down_b"])


def run_layers(layers: list[_Layer], h, cache_kv, cache_conv, cache_ssm, rows, pos, n_ctx: int, record: bool):
    """The residual stack over `layers`. Returns (h, {cache_idx: mamba record})."""
    records = {}
    for L in layers:
        x = rms_norm(h, L.norm_w, L.eps)
        if L.char == "*":
            h = h + _attention(L, x, cache_kv[L.cache_idx], rows, pos, n_ctx)
        elif L.char == "M":
            out, rec = _mamba(L, x, cache_conv[L.cache_idx], cache_ssm[L.cache_idx], rows, record)
            h = h + out
            if rec is not None:
                records[L.cache_idx] = rec
        elif L.char == "E":
            h = h + _moe(L, x)
        else:
            h = h + _mlp(L, x)
    return h, records


def forward_step(
    fw: FlatWeights, ids, rows, start, cache_kv, cache_conv, cache_ssm, n_ctx: int, record: bool
):
    """Backbone step: ids [batch, T] -> (final-normed hidden [batch, T, hidden], logits fp32, records)."""
    T = ids.shape[1]
    pos = start[:, None] + torch.arange(T, device=ids.device)  # [batch, T]
    h = F.embedding(ids, fw.embed)
    h, records = run_layers(fw.layers, h, cache_kv, cache_conv, cache_ssm, rows, pos, n_ctx, record)
    h = rms_norm(h, fw.norm_f, fw.eps)
    return h, F.linear(h, fw.lm_head).float(), records


def mtp_step(fw: FlatWeights, mw: FlatWeights, hidden, next_ids, rows, start, cache_kv, n_ctx: int):
    """MTP block (spec §4.7): (final-normed h_t [batch, T, hidden], x_{t+1} [batch, T]) at MTP positions
    start[b].. -> (final-normed g [batch, T, hidden], draft logits fp32 [batch, T, vocab])."""
    g = _mtp_block(fw, mw, hidden, next_ids, rows, start, cache_kv, n_ctx)
    return g, F.linear(g, fw.lm_head).float()


def _mtp_block(fw: FlatWeights, mw: FlatWeights, hidden, next_ids, rows, start, cache_kv, n_ctx: int):
    """`mtp_step` without the LM head: final-normed g [batch, T, hidden]."""
    T = next_ids.shape[1]
    pos = start[:, None] + torch.arange(T, device=next_ids.device)
    e = F.embedding(next_ids, fw.embed)
    u = F.linear(
        torch.cat([rms_norm(e, mw.enorm, mw.eps), rms_norm(hidden, mw.hnorm, mw.eps)], dim=-1), mw.eh_proj
    )
    u, _ = run_layers(mw.layers, u, cache_kv, {}, {}, rows, pos, n_ctx, False)
    return rms_norm(u, mw.final_norm, mw.eps)


def commit_mamba(
    records: dict, cache_conv: dict, cache_ssm: dict, rows: torch.Tensor, accept: torch.Tensor
) -> None:
    """Write the recorded state after token `accept[b]` (0-based within the step) into rows `rows`."""
    b = torch.arange(rows.shape[0], device=rows.device)
    for i, (window, states) in records.items():
        conv = cache_conv[i]
        km1 = conv.shape[-1]
        cols = accept[:, None] + 1 + torch.arange(km1, device=rows.device)  # [batch, K-1]
        idx = cols[:, None, :].expand(-1, window.shape[1], -1)
        conv[rows] = window.gather(2, idx).to(conv.dtype)
        cache_ssm[i][rows] = states[b, accept].to(cache_ssm[i].dtype)


def spec_step_greedy(
    fw: FlatWeights, mw: FlatWeights, ids, rows, start, cache_kv, cache_conv, cache_ssm, mtp_kv, n_ctx: int
):
    """One whole greedy MTP iteration as one function (one compiled graph): verify, accept, commit, draft.

    ids [batch, K+1] = [last token, d_1..d_K] at positions start[b].. -> (target tokens y [batch, K+1],
    accepted drafts j [batch], next drafts [batch, K]). Greedy strict acceptance (spec §6.2):
    j = number of leading d_i == y_{i-1}; the new tokens are y[:j+1]. The Mamba state after token j is
    committed; the caller sets both caches' lengths to start + j + 1. The MTP block runs over the K+1 pairs
    (h_t, y_t), its entry j drafts d'_1, then K-1 recursive applications draft the rest.
    """
    batch, T = ids.shape
    K = T - 1
    h, logits, rec = forward_step(fw, ids, rows, start, cache_kv, cache_conv, cache_ssm, n_ctx, True)
    y = logits.argmax(-1)  # [batch, K+1]
    j = (ids[:, 1:] == y[:, :K]).long().cumprod(1).sum(1)  # [batch]
    commit_mamba(rec, cache_conv, cache_ssm, rows, j)
    g = _mtp_block(fw, mw, h, y, rows, start, mtp_kv, n_ctx)  # [batch, K+1, hidden] (all K+1 MTP KV written)
    b = torch.arange(batch, device=ids.device)
    g = g[b, j][:, None]  # [batch, 1, hidden]
    d = F.linear(g[:, 0], fw.lm_head).float().argmax(-1)  # [batch]: the head only for entry j (drafts only)
    drafts = [d]
    pos = start + j + 1
    for i in range(K - 1):
        g, dl1 = mtp_step(fw, mw, g, d[:, None], rows, pos + i, mtp_kv, n_ctx)
        d = dl1[:, 0].argmax(-1)
        drafts.append(d)
    return y, j, torch.stack(drafts, dim=1)
