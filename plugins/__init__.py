"""Custom ops for Nemotron-H: one folder per op (reference.py, kernel.py, launch.py, op.py, trt.py).

Public entry points, one per op subpackage (lazy: importing them imports neither torch nor triton; the first
call registers `torch.ops.trtllm_nemotron.<op>` and dispatches through it):

    from plugins.mamba_state_update import mamba_state_update
        (xbc, dt, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A, D, slot_idx, *, n_groups,
         keep_steps=False) -> (y [batch, T, H*P] fp32, ssm_steps, conv_steps)
    from plugins.latent_moe_routing import latent_moe_routing
        (logits, bias, *, top_k, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0)
        -> (weights [T,k] fp32, idx [T,k] int32, counts [E] int32, perm [T*k] int32)
    from plugins.latent_moe_experts import latent_moe_experts
        (x, weights, counts, perm, up, down, *, up_scale=None, up_scale_2=None, down_scale=None,
         down_scale_2=None) -> out [T, k, X] fp32

Backend per call: Triton-lang kernel on CUDA, torch reference on CPU; TRTLLM_NEMOTRON_KERNELS=reference |
interpret forces one for the process (plugins/_dispatch.py). `plugins.aot.compile_all` compiles every
kernel for an SM without a GPU; `plugins.trt` registers the TensorRT plugins (needs tensorrt).
"""

from __future__ import annotations

from typing import Any

OPS = ("mamba_state_update", "latent_moe_routing", "latent_moe_experts")


def register_ops() -> None:
    """Register every `torch.ops.trtllm_nemotron.*` op now (they also register on first use)."""
    import importlib

    for name in OPS:
        importlib.import_module(f"plugins.{name}.op")


def __getattr__(name: str) -> Any:  # `plugins.aot` etc. as attributes, imported on first access
    if name in ("aot", "trt"):
        import importlib

        return importlib.import_module(f"plugins.{name}")
    raise AttributeError(f"module 'plugins' has no attribute {name!r}")
