"""`torch.ops.trtllm_nemotron.mamba_state_update`: the torch custom op, its fake (meta) implementation and
the user-facing wrapper `mamba_state_update(...)` that validates inputs.

Dispatch (plugins/_dispatch.py): the Triton-lang kernel on CUDA tensors, the torch reference on CPU, or
either forced for the whole process by TRTLLM_NEMOTRON_KERNELS=reference|interpret. Imports no triton.
"""

from __future__ import annotations

import torch

from plugins import _dispatch
from plugins.mamba_state_update.reference import mamba_state_update_ref
from trtllm_nemotron.errors import PluginError

_KERNEL_MODULE = "plugins.mamba_state_update.kernel"


@torch.library.custom_op("trtllm_nemotron::mamba_state_update", mutates_args=("conv_state", "ssm_state"))
def _mamba_state_update_op(
    xbc: torch.Tensor,
    dt: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    slot_idx: torch.Tensor,
    n_groups: int,
    keep_steps: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (
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
        n_groups,
        keep_steps,
    )
    backend = _dispatch.backend_for("mamba_state_update", xbc.device.type)
    if backend == "reference":
        return mamba_state_update_ref(*args)
    kmod = _dispatch.kernel_module(_KERNEL_MODULE, interpret=backend == "interpret")
    if backend == "interpret":
        with _dispatch.interpreting():
            return kmod.mamba_state_update(*args)
    return kmod.mamba_state_update(*args)


@_mamba_state_update_op.register_fake
def _(xbc, dt, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A, D, slot_idx, n_groups, keep_steps):
    batch, T, conv_dim = xbc.shape
    _, H, P, N = ssm_state.shape
    K = conv_weight.shape[-1]
    y = xbc.new_empty(batch, T, H * P, dtype=torch.float32)
    if keep_steps:
        return y, ssm_state.new_empty(batch, T, H, P, N), conv_state.new_empty(batch, T, conv_dim, K - 1)
    return y, ssm_state.new_empty(0), conv_state.new_empty(0)


def _expect(cond: bool, what: str, expected: object, got: object) -> None:
    if not cond:
        raise PluginError(f"mamba_state_update: {what}: expected {expected}, got {got}")


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
    """One fused Mamba-2 decode step for a batch (reference.py has the maths and the conventions).

    Args:
        xbc: [batch, T, conv_dim] or [batch, conv_dim] raw (pre-conv) x|B|C slice of in_proj's output.
        dt: [batch, T, H] or [batch, H] raw dt slice (before dt_bias and softplus).
        conv_state: [pool, conv_dim, K-1] pool of conv windows (xbc's dtype); updated in place.
        ssm_state: [pool, H, P, N] pool of SSM states, fp32 or fp16; updated in place.
        conv_weight: [conv_dim, K] or the checkpoint's [conv_dim, 1, K].
        conv_bias: [conv_dim] or None (zeros).
        dt_bias, A, D: [H]; A = -exp(A_log) (fp32).
        slot_idx: [batch] integer pool rows (distinct); a negative entry is a padding row (y = 0, no state change).
        n_groups: G, the number of B/C groups.
        keep_steps: also return the state after every token (speculative verification).
    Returns:
        y [batch, T, H*P] fp32 (or [batch, H*P] for 2-D inputs), and when keep_steps
        ssm_steps [batch, T, H, P, N] and conv_steps [batch, T, conv_dim, K-1] (else empty (0,) tensors,
        as `trtllm_nemotron.model.ops.mamba_decode_step` returns).
        The pools end at the last token; commit token j of row b with
        `ssm_state[slot[b]] = ssm_steps[b, j]; conv_state[slot[b]] = conv_steps[b, j]`.
    """
    squeeze = xbc.dim() == 2
    if squeeze:
        xbc, dt = xbc.unsqueeze(1), dt.unsqueeze(1)
    _expect(xbc.dim() == 3, "xbc rank", "[batch, T, conv_dim]", tuple(xbc.shape))
    _expect(ssm_state.dim() == 4, "ssm_state rank", "[pool, H, P, N]", tuple(ssm_state.shape))
    batch, T, conv_dim = xbc.shape
    pool, H, P, N = ssm_state.shape
    G = int(n_groups)
    _expect(G > 0 and H % G == 0, "n_groups", f"a divisor of H={H}", G)
    _expect(
        conv_dim == H * P + 2 * G * N, "xbc last dim (conv_dim = H*P + 2*G*N)", H * P + 2 * G * N, conv_dim
    )
    if conv_weight.dim() == 3:
        conv_weight = conv_weight.reshape(conv_weight.shape[0], conv_weight.shape[-1])
    K = conv_weight.shape[-1]
    _expect(
        tuple(conv_weight.shape) == (conv_dim, K),
        "conv_weight shape",
        (conv_dim, K),
        tuple(conv_weight.shape),
    )
    _expect(K >= 2, "conv kernel size K", ">= 2", K)
    _expect(
        tuple(conv_state.shape) == (pool, conv_dim, K - 1),
        "conv_state shape [pool, conv_dim, K-1]",
        (pool, conv_dim, K - 1),
        tuple(conv_state.shape),
    )
    _expect(tuple(dt.shape) == (batch, T, H), "dt shape", (batch, T, H), tuple(dt.shape))
    for name, v in (("dt_bias", dt_bias), ("A", A), ("D", D)):
        _expect(tuple(v.shape) == (H,), f"{name} shape", (H,), tuple(v.shape))
    _expect(tuple(slot_idx.shape) == (batch,), "slot_idx shape", (batch,), tuple(slot_idx.shape))
    _expect(
        ssm_state.dtype in (torch.float32, torch.float16),
        "ssm_state dtype",
        "float32 or float16",
        ssm_state.dtype,
    )
    _expect(conv_state.dtype == xbc.dtype, "conv_state dtype (= xbc dtype)", xbc.dtype, conv_state.dtype)
    if conv_bias is None:
        conv_bias = conv_weight.new_zeros(conv_dim)
    _expect(tuple(conv_bias.shape) == (conv_dim,), "conv_bias shape", (conv_dim,), tuple(conv_bias.shape))
    y, ssm_steps, conv_steps = torch.ops.trtllm_nemotron.mamba_state_update(
        xbc,
        dt,
        conv_state,
        ssm_state,
        conv_weight,
        conv_bias,
        dt_bias,
        A.float(),
        D,
        slot_idx.to(torch.int32),
        G,
        bool(keep_steps),
    )
    if squeeze:
        y = y.squeeze(1)
    return y, ssm_steps, conv_steps
