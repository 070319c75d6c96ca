"""MoE (`E`, spec §4.4-4.6) and the dense MLP (`-`, §4.5).

Experts are non-gated relu² MLPs (`down(relu(up(x))²)`). The router sees the full hidden state in fp32
(`ops.route`); with LatentMoE the routed experts run in the latent space between the shared fc1/fc2
projections, while the shared expert always runs on the full hidden state.

CPU efficiency: tokens are sorted by expert and each expert that received tokens runs one GEMM pair over
its tokens (a gather, no dense [T, E] loop); the weighted sum is accumulated in fp32 (as HF / remote code).
Parameter names are the checkpoint's: `gate.weight`, `gate.e_score_correction_bias` (an fp32 buffer kept
fp32 whatever the model dtype), `experts.{e}.up_proj.weight`, `shared_experts.*`, `fc{1,2}_latent_proj`.

The routed-experts sum is `routed_experts_index_add` unless the network is built with another
`RoutedExperts` (`model_from_config(..., moe_routed=...)`; training passes `train.fast.routed_experts_sorted`,
the same maths with a cheaper backward).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.model.ops import route


def relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class MLP(nn.Module):
    """down_proj(relu(up_proj(x))²): dense `-` layer, routed expert and shared expert."""

    def __init__(self, d_in: int, d_hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d_in, d_hidden, bias=bias)
        self.down_proj = nn.Linear(d_hidden, d_in, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(relu2(self.up_proj(x)))


class Router(nn.Module):
    e_score_correction_bias: torch.Tensor  # an fp32 buffer

    def __init__(self, cfg: NemotronHConfig) -> None:
        super().__init__()
        E = cfg.n_routed_experts
        self.weight = nn.Parameter(torch.zeros(E, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=torch.float32))
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.norm_topk_prob, self.routed_scaling_factor = cfg.norm_topk_prob, cfg.routed_scaling_factor

    def _apply(self, fn, recurse=True):  # keep the correction bias fp32 (and exact) through .to(dtype)
        before = self.e_score_correction_bias
        super()._apply(fn, recurse)
        after = self.e_score_correction_bias
        if after.dtype != torch.float32:
            self._buffers["e_score_correction_bias"] = before.to(device=after.device, dtype=torch.float32)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (weights [T, k] fp32, idx [T, k] int64)."""
        logits = F.linear(x.float(), self.weight.float())
        return route(
            logits,
            self.e_score_correction_bias,
            top_k=self.top_k,
            n_group=self.n_group,
            topk_group=self.topk_group,
            norm_topk_prob=self.norm_topk_prob,
            routed_scaling_factor=self.routed_scaling_factor,
        )


class MoE(nn.Module):
    def __init__(self, cfg: NemotronHConfig, *, routed: RoutedExperts | None = None) -> None:
        super().__init__()
        self.routed: RoutedExperts = routed or routed_experts_index_add
        X = cfg.expert_dim
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(
            MLP(X, cfg.moe_intermediate_size, cfg.mlp_bias) for _ in range(cfg.n_routed_experts)
        )
        self.shared_experts = (
            MLP(cfg.hidden_size, cfg.shared_expert_size, cfg.mlp_bias) if cfg.n_shared_experts else None
        )
        latent = cfg.moe_latent_size or 0
        self.latent = latent > 0
        if self.latent:
            self.fc1_latent_proj = nn.Linear(cfg.hidden_size, latent, bias=cfg.mlp_bias)
            self.fc2_latent_proj = nn.Linear(latent, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [batch, T, hidden] -> [batch, T, hidden]."""
        shape = h.shape
        x = h.reshape(-1, shape[-1])  # [tokens, hidden]
        w, idx = self.gate(x)  # [tokens, k]
        r = self.fc1_latent_proj(x) if self.latent else x  # [tokens, X]
        routed = self.routed(self, r, w, idx).to(h.dtype)
        if self.latent:
            routed = self.fc2_latent_proj(routed)
        out = routed.view(shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(h)
        return out


# (moe, r [tokens, X], w [tokens, k] fp32, idx [tokens, k]) -> Σ_j w[:, j]·Expert_{idx[:, j]}(r), [tokens, X] fp32
RoutedExperts = Callable[[MoE, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def routed_experts_index_add(moe: MoE, r: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Σ_j w[:, j]·Expert_{idx[:, j]}(r), accumulated in fp32. r [tokens, X] -> [tokens, X] fp32."""
    k = idx.shape[1]
    flat = idx.reshape(-1)  # [tokens*k]
    order = torch.argsort(flat, stable=True)
    token_of = order // k  # token of each sorted assignment
    counts = torch.bincount(flat, minlength=len(moe.experts)).tolist()
    w_sorted = w.reshape(-1)[order]
    acc = torch.zeros(r.shape, dtype=torch.float32, device=r.device)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        tok = token_of[start : start + n]
        y = moe.experts[e](r[tok])  # [n, X]
        acc.index_add_(0, tok, y.float() * w_sorted[start : start + n, None])
        start += n
    return acc
