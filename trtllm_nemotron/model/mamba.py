"""Mamba-2 mixer (spec §4.3): in_proj -> z | xBC | dt, causal depthwise conv + SiLU, selective SSM, gated
group RMSNorm, out_proj.

Two SSM paths with the same maths:
- `ssd_chunked` (prefill, training, multi-token appends): the chunked SSD form of §4.3.2, chunk length
  `config.chunk_size`, starting from an optional initial state; differentiable (no in-place updates).
- `ops.mamba_decode_step` (one token per row with a cache, or T tokens when the cache has `keep_steps`
  set for speculative verification): the recurrence of §4.3.3 on pooled states.

Conv state convention (vLLM/TRT): `[batch, conv_dim, K-1]` raw pre-conv inputs. The prefill conv always runs
over `cat(conv_state, xBC)` with no padding, which is the zero left-padding of a fresh sequence when the state
is zero, so a cached prefill, a continued prefill and an uncached forward are one code path.

dt clamp (§4.3.4), `clamp_dt_min`: False = never (vLLM / TRT-LLM / Megatron), True = prefill and decode
(HF remote-code torch fallback), "prefill_only" = the chunked path only (HF transformers >= 5.15, exactly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.model.norms import GatedRMSNorm
from trtllm_nemotron.model.ops import mamba_decode_step

if TYPE_CHECKING:
    from trtllm_nemotron.model.cache import HybridCache

ClampMode = bool | str  # False | True | "prefill_only"


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a [..., Q] -> [..., Q, Q] with out[l, s] = sum_{s < r <= l} a[r] for s <= l, -inf above the diagonal.

    Built from a masked cumsum (no differences of large cumsums, so it stays accurate for long chunks).
    """
    Q = a.shape[-1]
    strict = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), diagonal=-1)
    x = a[..., :, None].expand(*a.shape, Q).masked_fill(~strict, 0.0)  # x[l, s] = a[l] if l > s
    out = torch.cumsum(x, dim=-2)
    incl = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device))
    return out.masked_fill(~incl, float("-inf"))


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    Bm: torch.Tensor,
    Cm: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan in fp32, without the D skip.

    x [batch, T, H, P], dt [batch, T, H] (after softplus/clamp), A [H], Bm/Cm [batch, T, H, N] (expanded to
    heads), initial_state [batch, H, P, N] or None. Returns (y [batch, T, H, P], final_state [batch, H, P, N]).
    """
    batch, T, H, P = x.shape
    N = Bm.shape[-1]
    Q = chunk_size
    pad = (-T) % Q
    xbar = x.float() * dt[..., None]  # dt·x
    a = dt * A.float()  # [batch, T, H]
    if pad:  # padded steps have a = 0 and xbar = 0: they change nothing
        xbar = F.pad(xbar, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        Bm = F.pad(Bm, (0, 0, 0, 0, 0, pad))
        Cm = F.pad(Cm, (0, 0, 0, 0, 0, pad))
    nc = (T + pad) // Q
    xbar = xbar.view(batch, nc, Q, H, P)
    Bc = Bm.float().view(batch, nc, Q, H, N)
    Cc = Cm.float().view(batch, nc, Q, H, N)
    a = a.view(batch, nc, Q, H).permute(0, 3, 1, 2)  # [batch, H, c, Q]
    acum = torch.cumsum(a, dim=-1)
    # intra-chunk (diagonal blocks)
    Lmat = torch.exp(_segsum(a))  # [batch, H, c, l, s]
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * Lmat
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xbar)
    # each chunk's own end-state contribution
    decay = torch.exp(acum[..., -1:] - acum)  # [batch, H, c, Q]
    U = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay, xbar)
    # inter-chunk recurrence (sequential over chunks)
    S = x.new_zeros(batch, H, P, N, dtype=torch.float32) if initial_state is None else initial_state.float()
    chunk_decay = torch.exp(acum[..., -1])  # [batch, H, c]
    starts = []
    for c in range(nc):
        starts.append(S)
        S = chunk_decay[:, :, c, None, None] * S + U[:, c]
    S_in = torch.stack(starts, dim=1)  # [batch, c, H, P, N]
    y_off = torch.einsum("bclhn,bchpn->bclhp", Cc, S_in) * torch.exp(acum).permute(0, 2, 3, 1)[..., None]
    y = (y + y_off).reshape(batch, nc * Q, H, P)[:, :T]
    return y, S


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: NemotronHConfig, *, clamp_dt_min: ClampMode = False) -> None:
        super().__init__()
        if clamp_dt_min not in (False, True, "prefill_only"):
            raise ValueError(f"clamp_dt_min must be False, True or 'prefill_only', got {clamp_dt_min!r}")
        self.H, self.P, self.G, self.N = (
            cfg.mamba_num_heads,
            cfg.mamba_head_dim,
            cfg.n_groups,
            cfg.ssm_state_size,
        )
        self.K, self.chunk_size = cfg.conv_kernel, cfg.chunk_size
        self.d_inner, self.conv_dim = cfg.d_inner, cfg.conv_dim
        self.time_step_min = cfg.time_step_min
        self.clamp_dt_min = clamp_dt_min
        self.in_proj = nn.Linear(cfg.hidden_size, cfg.d_in_proj, bias=cfg.use_bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.K, groups=self.conv_dim, bias=cfg.use_conv_bias, padding=0
        )  # weight [C, 1, K] as in the checkpoint
        self.dt_bias = nn.Parameter(torch.ones(self.H))
        self.A_log = nn.Parameter(torch.zeros(self.H))
        self.D = nn.Parameter(torch.ones(self.H))
        self.norm = GatedRMSNorm(self.d_inner, cfg.norm_group_size, cfg.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.d_inner, cfg.hidden_size, bias=cfg.use_bias)

    def _dt_min(self, prefill: bool) -> float | None:
        if self.clamp_dt_min is True or (self.clamp_dt_min == "prefill_only" and prefill):
            return self.time_step_min
        return None

    def forward(
        self,
        h: torch.Tensor,
        cache: HybridCache | None = None,
        layer_idx: int = 0,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h [batch, T, hidden] -> [batch, T, hidden]. With a cache, `rows` [batch] are its row indices."""
        batch, T, _ = h.shape
        dtype = h.dtype
        z, xBC, dt = self.in_proj(h).split([self.d_inner, self.conv_dim, self.H], dim=-1)
        A = -torch.exp(self.A_log.float())
        if cache is not None and (T == 1 or cache.keep_steps):
            assert rows is not None, "with a cache, pass the batch's cache rows"
            y, ssm_steps, conv_steps = mamba_decode_step(
                xBC,
                dt,
                cache.conv[layer_idx],
                cache.ssm[layer_idx],
                self.conv1d.weight,
                self.conv1d.bias,
                self.dt_bias,
                A,
                self.D,
                rows,
                n_groups=self.G,
                keep_steps=cache.keep_steps,
                dt_min=self._dt_min(prefill=False),
            )  # y [batch, T, H*P] fp32
            if cache.keep_steps:
                cache.steps[layer_idx] = (ssm_steps, conv_steps)
        else:
            y = self._prefill(xBC, dt, A, cache, layer_idx, rows)
        y = self.norm(y.reshape(batch, T, self.d_inner), z)
        return self.out_proj(y.to(dtype))

    def _prefill(self, xBC, dt, A, cache, layer_idx, rows) -> torch.Tensor:
        batch, T, _ = xBC.shape
        xt = xBC.transpose(1, 2)  # [batch, C, T]
        if cache is None:
            prev = xt.new_zeros(batch, self.conv_dim, self.K - 1)
            init = None
        else:
            prev = cache.conv[layer_idx][rows].to(xt.dtype)
            init = cache.ssm[layer_idx][rows].float()
        window = torch.cat([prev, xt], dim=-1)  # [batch, C, K-1+T]
        xc = F.silu(F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim))
        xs, Bm, Cm = xc.transpose(1, 2).split([self.d_inner, self.G * self.N, self.G * self.N], dim=-1)
        hpg = self.H // self.G
        Bm = Bm.reshape(batch, T, self.G, self.N).repeat_interleave(hpg, dim=2)
        Cm = Cm.reshape(batch, T, self.G, self.N).repeat_interleave(hpg, dim=2)
        xs = xs.reshape(batch, T, self.H, self.P)
        d = F.softplus(dt.float() + self.dt_bias.float())
        dmin = self._dt_min(prefill=True)
        if dmin is not None:
            d = d.clamp(min=dmin)
        y, final = ssd_chunked(xs, d, A, Bm, Cm, self.chunk_size, init)
        y = y + self.D.float()[:, None] * xs.float()
        if cache is not None:
            with torch.no_grad():
                cache.conv[layer_idx][rows] = window[:, :, -(self.K - 1) :].to(cache.conv[layer_idx].dtype)
                cache.ssm[layer_idx][rows] = final.to(cache.ssm[layer_idx].dtype)
        return y
