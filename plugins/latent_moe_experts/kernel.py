"""Triton-lang kernels for the routed experts; numerics follow reference.py (fp32 accumulation, h rounded to
the activation dtype, weights dequantised in fp32 then cast to the activation dtype). Launch rule, grid and
argument order: launch.py.

NVFP4 weights are decoded in the kernel from their bits, exactly: an E2M1 code c (sign bit 3) is
0.5*m for exponent bits e = 0, else 2^(e-1) * (1 + m/2) (m = bit 0); an E4M3 scale byte is
m * 2^-9 for exponent 0, else (1 + m/8) * 2^(e-7), built as fp32 bits. Element value = code value *
(scale * scale_2), as `trtllm_nemotron.checkpoint.formats.dequantize_nvfp4`. Byte tensors may arrive as
uint8 (torch) or int8 (TensorRT); both are masked to 8 bits.

Only core builtins and jit functions of THIS file are called (see plugins/_dispatch.py: an interpreted
instance of this module must not call the stdlib's compiled-only jit helpers); sums are
`tl.reduce(x, axis, tl.standard._sum_combine)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plugins.latent_moe_experts.launch import launch_spec


@triton.jit
def _e2m1(code):
    """4-bit E2M1 codes (int32) -> fp32 values."""
    e = (code >> 1) & 3
    m = (code & 1).to(tl.float32)
    pow2 = tl.where(e == 3, 4.0, tl.where(e == 2, 2.0, 1.0))
    mag = tl.where(e == 0, 0.5 * m, pow2 * (1.0 + 0.5 * m))
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def _e4m3(byte):
    """E4M3 (fn) bytes (int32, 0..255) -> fp32 values (finite codes; block scales are never NaN)."""
    e = (byte >> 3) & 15
    m = byte & 7
    normal = (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True)
    mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal)
    return tl.where((byte & 128) != 0, -mag, mag)


@triton.jit
def _weight_tile(w_ptr, s_ptr, s2, row0, offs_in, offs_out, n_in, mask, NVFP4: tl.constexpr):
    """tile[i, o] = W[row0 + o, offs_in[i]] in fp32, for a row-major W [rows, n_in] (one expert's slice starts
    at row0 = e * n_out); NVFP4: packed bytes [rows, n_in/2] + E4M3 scales [rows, n_in/16] + scale_2 s2."""
    rows = (row0 + offs_out[None, :]).to(tl.int64)
    i = offs_in[:, None]
    if NVFP4:
        byte = tl.load(w_ptr + rows * (n_in // 2) + i // 2, mask=mask, other=0).to(tl.int32) & 255
        code = (byte >> ((i % 2) * 4)) & 15
        scale = _e4m3(tl.load(s_ptr + rows * (n_in // 16) + i // 16, mask=mask, other=0).to(tl.int32) & 255)
        return _e2m1(code) * (scale * s2)
    else:
        return tl.load(w_ptr + rows * n_in + i, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _experts(
    x_ptr,
    w_ptr,
    counts_ptr,
    perm_ptr,
    up_ptr,
    up_s_ptr,
    up_s2_ptr,
    down_ptr,
    down_s_ptr,
    down_s2_ptr,
    k,
    E,
    X,
    F,
    out_ptr,
    NVFP4: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    e = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    cnt = tl.load(counts_ptr + e)
    if pid_m * BLOCK_M >= cnt:
        return
    # start of expert e's rows in perm: sum of counts[:e], in chunks of 256 experts
    offs_c = tl.arange(0, 256)
    start = tl.reduce(tl.load(counts_ptr + offs_c, mask=offs_c < e, other=0), 0, tl.standard._sum_combine)
    for c0 in range(256, e, 256):
        cc = c0 + offs_c
        start += tl.reduce(tl.load(counts_ptr + cc, mask=cc < e, other=0), 0, tl.standard._sum_combine)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < cnt
    a = tl.load(perm_ptr + start + rows, mask=rmask, other=0).to(tl.int64)  # assignment ids t*k + j
    tok = a // k
    wgt = tl.load(w_ptr + a, mask=rmask, other=0.0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < X
    up_s2 = 1.0
    down_s2 = 1.0
    if NVFP4:
        up_s2 = tl.load(up_s2_ptr + e)
        down_s2 = tl.load(down_s2_ptr + e)
    xdt = x_ptr.dtype.element_ty
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        fmask = offs_f < F
        h = tl.full([BLOCK_M, BLOCK_F], 0.0, tl.float32)
        for k0 in range(0, X, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            kmask = offs_k < X
            xa = tl.load(
                x_ptr + tok[:, None] * X + offs_k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0
            )
            wu = _weight_tile(
                up_ptr, up_s_ptr, up_s2, e * F, offs_k, offs_f, X, kmask[:, None] & fmask[None, :], NVFP4
            )
            if F32_DOT:  # operands rounded to the activation dtype, multiplied in fp32
                h += tl.dot(xa.to(xdt).to(tl.float32), wu.to(xdt).to(tl.float32), input_precision="ieee")
            else:
                h += tl.dot(xa.to(xdt), wu.to(xdt))
        h = tl.maximum(h, 0.0)
        h = (h * h).to(xdt)  # relu(.)², rounded to the activation dtype as the network does
        wd = _weight_tile(
            down_ptr, down_s_ptr, down_s2, e * X, offs_f, offs_n, F, fmask[:, None] & nmask[None, :], NVFP4
        )
        if F32_DOT:
            acc += tl.dot(h.to(tl.float32), wd.to(xdt).to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(h, wd.to(xdt))
    tl.store(
        out_ptr + a[:, None] * X + offs_n[None, :], acc * wgt[:, None], mask=rmask[:, None] & nmask[None, :]
    )


@triton.jit
def _latent_moe_experts_kernel(
    x_ptr,
    w_ptr,
    counts_ptr,
    perm_ptr,
    up_ptr,
    down_ptr,
    k,
    E,
    X,
    F,
    out_ptr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    _experts(
        x_ptr,
        w_ptr,
        counts_ptr,
        perm_ptr,
        up_ptr,
        up_ptr,
        w_ptr,
        down_ptr,
        down_ptr,
        w_ptr,
        k,
        E,
        X,
        F,
        out_ptr,
        False,
        BLOCK_M,
        BLOCK_N,
        BLOCK_F,
        BLOCK_K,
        F32_DOT,
    )


@triton.jit
def _latent_moe_experts_nvfp4_kernel(
    x_ptr,
    w_ptr,
    counts_ptr,
    perm_ptr,
    up_ptr,
    up_s_ptr,
    up_s2_ptr,
    down_ptr,
    down_s_ptr,
    down_s2_ptr,
    k,
    E,
    X,
    F,
    out_ptr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_F: tl.constexpr,
    BLOCK_K: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    _experts(
        x_ptr,
        w_ptr,
        counts_ptr,
        perm_ptr,
        up_ptr,
        up_s_ptr,
        up_s2_ptr,
        down_ptr,
        down_s_ptr,
        down_s2_ptr,
        k,
        E,
        X,
        F,
        out_ptr,
        True,
        BLOCK_M,
        BLOCK_N,
        BLOCK_F,
        BLOCK_K,
        F32_DOT,
    )


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def latent_moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    perm: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    up_scale: torch.Tensor | None = None,
    up_scale_2: torch.Tensor | None = None,
    down_scale: torch.Tensor | None = None,
    down_scale_2: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launcher: same contract as `reference.latent_moe_experts_ref` (inputs validated by op.py)."""
    T, X = x.shape
    k = weights.shape[1]
    E, F = up.shape[0], up.shape[1]
    nvfp4 = up_scale is not None
    out = torch.zeros(T, k, X, dtype=torch.float32, device=x.device)  # rows of no expert stay 0
    if T == 0:
        return out
    x = x.contiguous()
    w = weights.float().contiguous()
    counts = counts.to(torch.int32).contiguous()
    perm = perm.to(torch.int32).contiguous()
    wargs: tuple[torch.Tensor, ...]
    if nvfp4:
        assert up_scale_2 is not None and down_scale is not None and down_scale_2 is not None
        byte = lambda t: t.contiguous().view(torch.uint8)  # noqa: E731  (E4M3 scales travel as their bytes)
        wargs = (
            byte(up),
            byte(up_scale),
            up_scale_2.float().contiguous(),
            byte(down),
            byte(down_scale),
            down_scale_2.float().contiguous(),
        )
        wdt = "uint8"
    else:
        wargs = (up.contiguous(), down.contiguous())
        wdt = _dtype_name(up)
    fn = _latent_moe_experts_nvfp4_kernel if nvfp4 else _latent_moe_experts_kernel
    interpreted = type(fn).__name__ == "InterpretedFunction"
    spec = launch_spec(
        T=T, E=E, X=X, F=F, k=k, nvfp4=nvfp4, act_dtype=_dtype_name(x), weight_dtype=wdt, f32_dot=interpreted
    )
    fn[spec.grid](x, w, counts, perm, *wargs, *spec.scalars, out, **spec.constexprs, num_warps=spec.num_warps)
    return out
