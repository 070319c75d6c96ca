"""The layer table: one pre-norm residual block per pattern character (spec §4.1).

    h = h + mixer(norm(h))

`LAYER_TYPES` maps `M` Mamba-2, `*` attention, `E` MoE, `-` dense MLP to a mixer constructor. Every block
exposes `norm` and `mixer` (the checkpoint's `backbone.layers.{i}.norm` / `.mixer` names) and one forward
signature `(h, cache=None, layer_idx=0, rows=None)`; only the stateful mixers look at the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.model.attention import Attention
from trtllm_nemotron.model.mamba import ClampMode, Mamba2Mixer
from trtllm_nemotron.model.moe import MLP, MoE, RoutedExperts
from trtllm_nemotron.model.norms import RMSNorm

if TYPE_CHECKING:
    from trtllm_nemotron.model.cache import HybridCache

LAYER_TYPES: dict[str, Callable[..., nn.Module]] = {
    "M": lambda cfg, clamp_dt_min=False, moe_routed=None: Mamba2Mixer(cfg, clamp_dt_min=clamp_dt_min),
    "*": lambda cfg, clamp_dt_min=False, moe_routed=None: Attention(cfg),
    "E": lambda cfg, clamp_dt_min=False, moe_routed=None: MoE(cfg, routed=moe_routed),
    "-": lambda cfg, clamp_dt_min=False, moe_routed=None: MLP(
        cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
    ),
}
STATEFUL = {"M": "mamba", "*": "attention"}  # chars whose mixer reads/writes the HybridCache


class Block(nn.Module):
    def __init__(
        self,
        cfg: NemotronHConfig,
        char: str,
        *,
        clamp_dt_min: ClampMode = False,
        moe_routed: RoutedExperts | None = None,
    ) -> None:
        super().__init__()
        self.char = char
        self.norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        self.mixer = LAYER_TYPES[char](cfg, clamp_dt_min=clamp_dt_min, moe_routed=moe_routed)

    def forward(
        self,
        h: torch.Tensor,
        cache: HybridCache | None = None,
        layer_idx: int = 0,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.norm(h)
        if self.char in STATEFUL:
            return h + self.mixer(x, cache, layer_idx, rows)
        return h + self.mixer(x)


def build_layer(
    cfg: NemotronHConfig,
    char: str,
    *,
    clamp_dt_min: ClampMode = False,
    moe_routed: RoutedExperts | None = None,
) -> Block:
    """The block for pattern char `char`. `moe_routed`: the MoE routed-experts sum (None: the reference)."""
    if char not in LAYER_TYPES:
        raise ValueError(f"unknown layer char {char!r}; expected one of {''.join(LAYER_TYPES)}")
    return Block(cfg, char, clamp_dt_min=clamp_dt_min, moe_routed=moe_routed)
