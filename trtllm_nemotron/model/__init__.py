"""The NemotronH reference network in plain PyTorch (spec §4).

Shape letters used in comments everywhere:
    batch · T tokens (sequence) · hidden (d_model) · H heads · P mamba head_dim
    G n_groups · N ssm_state_size · K conv_kernel · E routed experts · k active (top-k) experts
    F expert intermediate size · L latent size (moe_latent_size)
`A, B, C, D, dt, x, z` are the SSM tensors (paper names), so batch and hidden size are spelled out.

Modules: norms, attention, mamba (+ ops.mamba_decode_step), moe (+ ops.route), layers (the layer table),
cache (HybridCache), network (NemotronHForCausalLM, MTPBlock), loader (load_model, model_from_config).
"""

from __future__ import annotations

from trtllm_nemotron.model.cache import HybridCache
from trtllm_nemotron.model.loader import build_model_skeleton, load_model, model_from_config
from trtllm_nemotron.model.network import MTPBlock, NemotronHForCausalLM

__all__ = [
    "HybridCache",
    "MTPBlock",
    "NemotronHForCausalLM",
    "build_model_skeleton",
    "load_model",
    "model_from_config",
]
