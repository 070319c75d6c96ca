"""NemotronHForCausalLM: the reference network (spec §4.1, §4.7).

Module layout equals the HF checkpoint's canonical names, so `state_dict()` keys == `expected_tensors(cfg)`:
`backbone.embeddings`, `backbone.layers.{i}.{norm,mixer}`, `backbone.norm_f`, `lm_head` (absent when
embeddings are tied), `mtp.layers.{j}` (the MTP sublayers; the first of each depth holds `enorm`, `hnorm`,
`eh_proj`, the last `final_layernorm`).

`forward(input_ids, cache=None, *, return_hidden=False, rows=None)` returns float32 logits. With a
`HybridCache`, `input_ids [batch, T]` are appended to cache rows `rows` (default: rows 0..batch-1) and the
rows' lengths advance by T; T == 1 uses the recurrent Mamba step, T > 1 the chunked scan from the carried state
(or the recurrent step with per-step states when `cache.keep_steps` is set, for speculative verification).
For prefill, `hidden_states(...)` then `logits(h[:, -1:])` avoids the full-vocab head over every position.

MTP (§4.7, DeepSeek-V3 shift): the MTP sequence at index t pairs the final-normed backbone hidden h_t with
the embedding of token t+1 and predicts token t+2. `mtp_step` feeds its own final-normed output back as the
next hidden for recursive drafting.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.model.cache import HybridCache
from trtllm_nemotron.model.layers import STATEFUL, build_layer
from trtllm_nemotron.model.mamba import ClampMode
from trtllm_nemotron.model.moe import RoutedExperts
from trtllm_nemotron.model.norms import RMSNorm


class Backbone(nn.Module):
    def __init__(
        self,
        cfg: NemotronHConfig,
        *,
        clamp_dt_min: ClampMode = False,
        moe_routed: RoutedExperts | None = None,
    ) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            build_layer(cfg, ch, clamp_dt_min=clamp_dt_min, moe_routed=moe_routed) for ch in cfg.pattern
        )
        self.norm_f = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)


class MTPSublayer(nn.Module):
    """One MTP sublayer `mtp.layers.{j}`: a pre-norm residual block, plus the input fusion on the first
    sublayer of a depth and the final norm on its last."""

    def __init__(
        self,
        cfg: NemotronHConfig,
        char: str,
        *,
        first: bool,
        last: bool,
        clamp_dt_min: ClampMode = False,
        moe_routed: RoutedExperts | None = None,
    ) -> None:
        super().__init__()
        D, eps = cfg.hidden_size, cfg.layer_norm_epsilon
        self.char, self.first, self.last = char, first, last
        if first:
            self.enorm = RMSNorm(D, eps)
            self.hnorm = RMSNorm(D, eps)
            self.eh_proj = nn.Linear(2 * D, D, bias=False)
        block = build_layer(cfg, char, clamp_dt_min=clamp_dt_min, moe_routed=moe_routed)
        self.norm, self.mixer = block.norm, block.mixer
        if last:
            self.final_layernorm = RMSNorm(D, eps)

    def forward(self, u: torch.Tensor, cache: HybridCache | None, idx: int, rows: torch.Tensor | None):
        x = self.norm(u)
        if self.char in STATEFUL:
            return u + self.mixer(x, cache, idx, rows)
        return u + self.mixer(x)


class MTPBlock(nn.Module):
    def __init__(
        self,
        cfg: NemotronHConfig,
        *,
        clamp_dt_min: ClampMode = False,
        moe_routed: RoutedExperts | None = None,
    ) -> None:
        super().__init__()
        p = cfg.mtp_pattern
        n = len(p)
        self.depth_len = n
        self.layers = nn.ModuleList(
            MTPSublayer(
                cfg,
                ch,
                first=j % n == 0,
                last=j % n == n - 1,
                clamp_dt_min=clamp_dt_min,
                moe_routed=moe_routed,
            )
            for j, ch in enumerate(p * cfg.num_nextn_predict_layers)
        )

    def forward(
        self,
        emb: torch.Tensor,
        hidden: torch.Tensor,
        cache: HybridCache | None = None,
        rows: torch.Tensor | None = None,
        depth: int = 0,
    ) -> torch.Tensor:
        """emb (embedding of the next token) and hidden (final-normed) [batch, T, hidden] -> final-normed g."""
        j0 = depth * self.depth_len
        first = cast(MTPSublayer, self.layers[j0])
        u = first.eh_proj(torch.cat([first.enorm(emb), first.hnorm(hidden)], dim=-1))
        for j in range(j0, j0 + self.depth_len):
            u = self.layers[j](u, cache, j, rows)
        return cast(MTPSublayer, self.layers[j0 + self.depth_len - 1]).final_layernorm(u)


class NemotronHForCausalLM(nn.Module):
    source_path: str | None = None  # set by `load_model`: the checkpoint dir the weights came from

    def __init__(
        self,
        cfg: NemotronHConfig,
        *,
        clamp_dt_min: ClampMode = False,
        moe_routed: RoutedExperts | None = None,
    ) -> None:
        """`moe_routed`: how every MoE sums its routed experts (None: `moe.routed_experts_index_add`)."""
        super().__init__()
        self.config = cfg
        self.clamp_dt_min = clamp_dt_min
        self.backbone = Backbone(cfg, clamp_dt_min=clamp_dt_min, moe_routed=moe_routed)
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        self.mtp = (
            MTPBlock(cfg, clamp_dt_min=clamp_dt_min, moe_routed=moe_routed)
            if cfg.num_nextn_predict_layers
            else None
        )

    # convenient aliases (the runtime and quantizer use the backbone's modules directly)
    @property
    def embed(self) -> nn.Embedding:
        return self.backbone.embeddings

    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def norm_f(self) -> RMSNorm:
        return self.backbone.norm_f

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden [..., hidden] -> float32 logits [..., vocab]."""
        w = self.backbone.embeddings.weight if self.lm_head is None else self.lm_head.weight
        return torch.nn.functional.linear(h, w).float()

    def allocate_cache(
        self, batch_size: int, max_seq_len: int, *, ssm_dtype: torch.dtype = torch.float32, mtp: bool = False
    ) -> HybridCache:
        """A HybridCache in this model's dtype/device (mtp=True: for the MTP block)."""
        p = self.backbone.embeddings.weight
        alloc = HybridCache.allocate_mtp if mtp else HybridCache.allocate
        return alloc(self.config, batch_size, max_seq_len, p.dtype, p.device, ssm_dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: HybridCache | None = None,
        *,
        return_hidden: bool = False,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """input_ids [batch, T] int64 -> logits [batch, T, vocab] float32 (and the final-normed hidden
        [batch, T, hidden] if return_hidden)."""
        h = self.hidden_states(input_ids, cache, rows=rows)
        logits = self.logits(h)
        return (logits, h) if return_hidden else logits

    def hidden_states(
        self, input_ids: torch.Tensor, cache: HybridCache | None = None, *, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-normed hidden states [batch, T, hidden]."""
        batch, T = input_ids.shape
        r = None
        if cache is not None:
            r = cache.rows(rows) if rows is not None else torch.arange(batch, device=cache.device)
            if r.numel() != batch:
                raise ValueError(f"rows has {r.numel()} entries for a batch of {batch}")
            cache.check_room(r, T)
            cache.steps.clear()  # per-step states belong to one keep_steps forward only
        h = self.backbone.embeddings(input_ids)
        for i, layer in enumerate(self.backbone.layers):
            h = layer(h, cache, i, r)
        if cache is not None and r is not None:
            cache.advance(r, T)
        return self.backbone.norm_f(h)

    # ---- MTP (§4.7) ----
    def _need_mtp(self) -> MTPBlock:
        if self.mtp is None:
            raise ValueError("this model has no MTP block (num_nextn_predict_layers = 0)")
        return self.mtp

    def mtp_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, T] -> [batch, T-1, vocab]: position t uses h_t and emb(x_{t+1}), predicts x_{t+2}."""
        mtp = self._need_mtp()
        h = self.hidden_states(input_ids)
        g = mtp(self.backbone.embeddings(input_ids[:, 1:]), h[:, :-1])
        return self.logits(g)

    def mtp_step(
        self,
        hidden: torch.Tensor,
        next_ids: torch.Tensor,
        mtp_cache: HybridCache | None = None,
        *,
        rows: torch.Tensor | None = None,
        depth: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One MTP application. hidden [batch, T, hidden] (final-normed h_t), next_ids [batch, T] (x_{t+1})
        -> (logits [batch, T, vocab] for x_{t+2}, final-normed output [batch, T, hidden] to feed back as the
        next hidden). With `mtp_cache` (from `allocate_cache(..., mtp=True)`) the MTP attention is causal over
        everything this block has seen in those rows and the rows' lengths advance by T."""
        mtp = self._need_mtp()
        batch, T = next_ids.shape
        r = None
        if mtp_cache is not None:
            r = mtp_cache.rows(rows) if rows is not None else torch.arange(batch, device=mtp_cache.device)
            mtp_cache.check_room(r, T)
            mtp_cache.steps.clear()
        g = mtp(self.backbone.embeddings(next_ids), hidden, mtp_cache, r, depth)
        if mtp_cache is not None and r is not None:
            mtp_cache.advance(r, T)
        return self.logits(g), g
