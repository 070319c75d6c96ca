"""RMSNorm and the gated group RMSNorm of the Mamba-2 mixer (spec §4.1, §4.3.1).

Both normalise in fp32 and multiply by the weight in fp32 (HF, remote code and the mamba_ssm
`rmsnorm_fn` kernel agree); the plain norm rounds back to the input dtype once at the end, the gated norm
returns fp32 so the caller rounds once before `out_proj`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = (w.float() * x.float() * rsqrt(mean(x², -1) + eps)).to(x.dtype)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * xf).to(x.dtype)


def gated_rms_norm(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float
) -> torch.Tensor:
    """norm_before_gate=False: u = y·silu(z), normalised per group of `group_size` channels. Returns fp32.

    y, z: [..., d_inner]; weight: [d_inner].
    """
    u = y.float() * F.silu(z.float())
    *lead, d = u.shape
    g = u.view(*lead, d // group_size, group_size)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return weight.float() * g.view(*lead, d)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """Group RMSNorm gated by silu(z); groups = n_groups of the Mamba B/C projections."""

    def __init__(self, d_inner: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_inner))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight, self.group_size, self.eps)
