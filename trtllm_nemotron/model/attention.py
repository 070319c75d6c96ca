"""Causal GQA self-attention without positional encoding (NoPE, spec §4.2), on `F.scaled_dot_product_attention`.

Without a cache it is plain causal attention. With a `HybridCache`, the new T tokens of row b are written
at positions `lengths[b] .. lengths[b]+T-1` of that row's KV buffer and attend to every cached position up
to their own, so rows at different lengths batch together (a per-row length mask). The cache's lengths are
advanced by the network after all layers ran, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from trtllm_nemotron.config import NemotronHConfig

if TYPE_CHECKING:
    from trtllm_nemotron.model.cache import HybridCache


class Attention(nn.Module):
    def __init__(self, cfg: NemotronHConfig) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        D, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(D, self.nh * self.hd, bias=bias)
        self.k_proj = nn.Linear(D, self.nkv * self.hd, bias=bias)
        self.v_proj = nn.Linear(D, self.nkv * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.nh * self.hd, D, bias=bias)

    def forward(
        self,
        h: torch.Tensor,
        cache: HybridCache | None = None,
        layer_idx: int = 0,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """h [batch, T, hidden] -> [batch, T, hidden]."""
        batch, T, _ = h.shape
        q = self.q_proj(h).view(batch, T, self.nh, self.hd).transpose(1, 2)  # [batch, nh, T, hd]
        k = self.k_proj(h).view(batch, T, self.nkv, self.hd)
        v = self.v_proj(h).view(batch, T, self.nkv, self.hd)
        gqa = self.nh != self.nkv
        if cache is None:
            o = F.scaled_dot_product_attention(
                q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=gqa
            )
        else:
            assert rows is not None, "with a cache, pass the batch's cache rows"
            kc, vc = cache.kv[layer_idx]  # [rows_total, nkv, max_len, hd]
            start = cache.lengths[rows]  # [batch]
            pos = start[:, None] + torch.arange(T, device=h.device)  # [batch, T]
            r = rows[:, None]
            with torch.no_grad():
                kc[r, :, pos] = k.detach().to(kc.dtype)  # advanced indices first: [batch, T, nkv, hd]
                vc[r, :, pos] = v.detach().to(vc.dtype)
            L = int(pos.max()) + 1
            keys = kc[rows, :, :L].to(q.dtype)  # [batch, nkv, L, hd]
            vals = vc[rows, :, :L].to(q.dtype)
            mask = torch.arange(L, device=h.device)[None, None, :] <= pos[:, :, None]  # [batch, T, L]
            o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask[:, None], enable_gqa=gqa)
        return self.o_proj(o.transpose(1, 2).reshape(batch, T, self.nh * self.hd))
