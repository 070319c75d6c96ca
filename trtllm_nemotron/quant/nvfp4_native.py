"""The CPU kernel behind `nvfp4.quantize`: two streaming passes in C++ instead of ~10 torch passes.

Why: on the CPU the torch formulation of NVFP4 rounding (block amax, fp32 division, a bucketize over the
E2M1 midpoints, nibble packing) runs at ~60-110 MB/s of bf16 source, while an elementwise pass runs at
~1.2 GB/s; the rounding is what made quantizing a large checkpoint take hours. `nvfp4_kernel.cpp` does the
block amax in one pass and divide + round + pack in a second, with the same fp32 operations in the same
order, so its bytes equal the torch path's and ModelOpt's (tests/quant/test_formats.py checks both paths
against nvidia-modelopt). The small per-block steps (global scale, E4M3 block scales) stay in torch.

Compiled on first use like the native runtime step (`runtime.native.compile_library`: host g++, cached
under $TRTLLM_NEMOTRON_CACHE_DIR). No compiler, or a tensor that is not a contiguous CPU bf16/fp32 tensor,
-> `nvfp4.quantize` uses the torch path (CUDA tensors always do: there torch is already memory-bound).
`TRTLLM_NEMOTRON_NVFP4_KERNEL=torch` forces the torch path (`native` makes a missing compiler an error).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("nvfp4_kernel.cpp")
ENV = "TRTLLM_NEMOTRON_NVFP4_KERNEL"
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_unavailable: str | None = None


def _load() -> ctypes.CDLL | None:
    global _lib, _unavailable
    with _lock:
        if _lib is not None or _unavailable is not None:
            return _lib
        from trtllm_nemotron.native_build import NativeUnavailable, compile_library

        try:
            lib = ctypes.CDLL(str(compile_library(SOURCE, "libnemotron_nvfp4.so", "the NVFP4 CPU kernel")))
        except (NativeUnavailable, OSError) as e:
            _unavailable = str(e)
            log.warning("NVFP4 CPU kernel unavailable, using the torch path (slower): %s", e)
            return None
        vp, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        for name in ("nq_block_amax_bf16", "nq_block_amax_f32"):
            getattr(lib, name).argtypes = [vp, i64, vp, i32]
            getattr(lib, name).restype = i32
        for name in ("nq_e2m1_bf16", "nq_e2m1_f32"):
            getattr(lib, name).argtypes = [vp, vp, i64, vp, i32]
            getattr(lib, name).restype = None
        _lib = lib
        return _lib


def usable(w: torch.Tensor) -> bool:
    """Whether `w` goes through the kernel (CPU, bf16/fp32, contiguous, and the kernel builds)."""
    mode = os.environ.get(ENV, "auto")
    if mode == "torch":
        return False
    if w.device.type != "cpu" or w.dtype not in (torch.bfloat16, torch.float32) or not w.is_contiguous():
        return False
    if _load() is None:
        if mode == "native":
            raise RuntimeError(f"{ENV}=native but the NVFP4 CPU kernel is unavailable: {_unavailable}")
        return False
    return True


def _suffix(w: torch.Tensor) -> str:
    return "bf16" if w.dtype == torch.bfloat16 else "f32"


def block_amax(w: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(max |w| per 16-block, fp32 [..., in/16]; whether w holds NaN/inf). `w` must pass `usable`."""
    lib = _load()
    assert lib is not None
    out = torch.empty((*w.shape[:-1], w.shape[-1] // 16), dtype=torch.float32)
    bad = getattr(lib, f"nq_block_amax_{_suffix(w)}")(
        w.data_ptr(), out.numel(), out.data_ptr(), torch.get_num_threads()
    )
    return out, bool(bad)


def e2m1_pack(w: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """Packed codes uint8 [..., in/2] of `w / divisor` per block (divisor fp32 [..., in/16], contiguous)."""
    lib = _load()
    assert lib is not None
    d = divisor.to(torch.float32).contiguous()
    out = torch.empty((*w.shape[:-1], w.shape[-1] // 2), dtype=torch.uint8)
    getattr(lib, f"nq_e2m1_{_suffix(w)}")(
        w.data_ptr(), d.data_ptr(), d.numel(), out.data_ptr(), torch.get_num_threads()
    )
    return out
