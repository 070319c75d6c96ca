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

`plugins.mamba_state_update(...)` / `plugins.latent_moe_routing(...)` (package-level functions sharing their
subpackages' names) remain only for `trtllm_nemotron/runtime/step.py`, which is being removed; new code uses
the subpackage functions above. Delete the two functions and the two imports below with step.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The op folders share their names with the public functions below. Import the (docstring-only, torch-free)
# subpackages first so that the functions defined afterwards own the attributes: Python binds a subpackage
# to its parent's attribute only when it is first imported, so later `from plugins.<op>.op import ...`
# leaves `plugins.<op>` the function. (So write `from plugins.<op> import kernel`, not `import plugins.<op>.kernel
# as k`, which resolves through attributes.)
from plugins import latent_moe_routing as _latent_moe_routing_pkg  # noqa: F401
from plugins import mamba_state_update as _mamba_state_update_pkg  # noqa: F401

if TYPE_CHECKING:
    import torch

OPS = ("mamba_state_update", "latent_moe_routing", "latent_moe_experts")


def mamba_state_update(
    xbc: torch.Tensor,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compatibility for runtime/step.py only: `plugins.mamba_state_update.mamba_state_update`."""
    from plugins.mamba_state_update.op import mamba_state_update as _impl

    return _impl(
        xbc, dt, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A, D, slot_idx,
        n_groups=n_groups, keep_steps=keep_steps,
    )  # fmt: skip


def latent_moe_routing(
    logits: torch.Tensor,
    bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compatibility for runtime/step.py only: `plugins.latent_moe_routing.latent_moe_routing`."""
    from plugins.latent_moe_routing.op import latent_moe_routing as _impl

    return _impl(
        logits, bias, top_k=top_k, n_group=n_group, topk_group=topk_group, norm_topk_prob=norm_topk_prob,
        routed_scaling_factor=routed_scaling_factor,
    )  # fmt: skip


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
