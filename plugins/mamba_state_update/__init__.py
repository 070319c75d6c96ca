"""`trtllm_nemotron::mamba_state_update`: one fused Mamba-2 decode step (conv shift + conv + SiLU + SSM update).

reference.py is the specification; kernel.py the Triton-lang kernel; launch.py the launch rule shared by
the torch launcher and the TensorRT AOT plugin; op.py the torch custom op; trt.py the TensorRT plugin.
Nothing here imports triton or tensorrt. The public entry point is `plugins.mamba_state_update.mamba_state_update`
(`from plugins.mamba_state_update import mamba_state_update`), a lazy wrapper of op.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
    """One fused Mamba-2 decode step; see `plugins.mamba_state_update.op.mamba_state_update` for the contract."""
    from plugins.mamba_state_update.op import mamba_state_update as _impl

    return _impl(
        xbc,
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
