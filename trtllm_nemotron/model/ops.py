"""The network's two hot ops, dispatched to the custom plugins (`plugins/`), which hold their torch references.

- `mamba_decode_step`: recurrent Mamba-2 step(s) on raw, pre-conv inputs with conv and SSM state held in a
  pool addressed by per-sequence slot indices (spec §4.3.3) -> `plugins.mamba_state_update`.
- `route`: DeepSeek-V3 "noaux_tc" sigmoid routing with correction bias and group-limited top-k (spec §4.4)
  -> `plugins.latent_moe_routing`.

Backend per call (plugins/_dispatch.py): the Triton-lang kernel on CUDA tensors, the torch reference on CPU;
`TRTLLM_NEMOTRON_KERNELS=reference|interpret` forces one for the whole process. Everything that runs the
reference network's modules -- training, calibration, and the runtime's "eager" step backend (its CUDA path,
runtime/torch_backend.py) -- therefore runs the kernels on a GPU and the references on a CPU. The one other
implementation of both ops is the runtime's native CPU step (runtime/native/step.cpp), which tests pin to
these (tests/runtime/test_backends.py; routing ties: tests/runtime/test_routing_ties.py).
"""

from __future__ import annotations

import math

import torch

from plugins.latent_moe_routing import latent_moe_routing
from plugins.mamba_state_update import mamba_state_update


def route(
    logits_fp32: torch.Tensor,
    e_score_correction_bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    norm_topk_prob: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits [T, E] (fp32) -> (weights [T, k] fp32, idx [T, k] int64); see plugins/latent_moe_routing.

    The plugin op has no autograd formula; when gradients are needed (training) the plugin still chooses
    the experts and the weights are recomputed differentiably from the same formula.
    """
    w, idx, _, _ = latent_moe_routing(
        logits_fp32.float(),
        e_score_correction_bias,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=routed_scaling_factor,
    )
    idx = idx.long()
    if torch.is_grad_enabled() and logits_fp32.requires_grad:
        w = logits_fp32.float().sigmoid().gather(1, idx)
        if norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * routed_scaling_factor
    return w, idx


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def mamba_decode_step(
    xBC: torch.Tensor,
    dt: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    slot_idx: torch.Tensor,
    *,
    n_groups: int,
    keep_steps: bool = False,
    dt_min: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recurrent Mamba-2 step(s) for a batch of sequences whose states live in a pool.

    Args (batch rows, T new tokens per row, S pool slots): as `plugins.mamba_state_update` —
    xBC [batch, T, conv_dim] raw x|B|C; dt [batch, T, H] raw; conv_state [S, conv_dim, K-1] and ssm_state
    [S, H, P, N] updated in place; slot_idx [batch] (negative = padding row); keep_steps returns the state
    after every step (speculative verification). Two additions:
        conv_bias None: a model without conv bias (zeros are passed to the plugin).
        dt_min: clamp softplus(dt + dt_bias) from below (HF torch-fallback semantics, §4.3.4). softplus is
            monotonic, so clamp(softplus(u), m) == softplus(max(u, softplus⁻¹(m))): the clamp becomes a
            clamp of the raw dt and the plugin (which has none) stays the single implementation.
    Returns:
        (y [batch, T, H*P] fp32 before the z gate / gated norm, ssm_steps, conv_steps).
    """
    if conv_bias is None:
        conv_bias = torch.zeros(xBC.shape[-1], dtype=xBC.dtype, device=xBC.device)
    if dt_min is not None:
        floor = _softplus_inverse(dt_min) - dt_bias.float()  # [H]
        dt = torch.maximum(dt.float(), floor)  # the plugin upcasts dt to fp32 anyway
    return mamba_state_update(
        xBC,
        dt,
        conv_state,
        ssm_state,
        conv_weight,
        conv_bias,
        dt_bias,
        A,
        D,
        slot_idx,
        n_groups=n_groups,
        keep_steps=keep_steps,
    )


__all__ = ["route", "mamba_decode_step"]
