"""Compiling a C++ source of this package into a cached shared library with the host compiler.

Used by the native CPU decode step (`runtime/native/step.cpp`) and the NVFP4 quantization kernel
(`quant/nvfp4_kernel.cpp`). The library goes to `<cache>/native/<key>/<name>` (`fileio.cache_dir()`), keyed by
the source, the flags, the compiler's version and the CPU (`-march=native`), built in a temp dir and renamed
so concurrent builders never see half a file. No compiler, an unwritable cache or a compile error ->
`NativeUnavailable` with the reason; callers fall back to their torch path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from trtllm_nemotron.fileio import CACHE_ENV, atomic_dir, cache_dir

log = logging.getLogger(__name__)

DEFAULT_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno"]


class NativeUnavailable(RuntimeError):
    """A native library cannot be built or used here (the message says why and what to do)."""


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise NativeUnavailable(
            "no C++ compiler found (looked for $CXX, g++, c++); install g++ (or set $CXX). Without one the "
            "engine uses backend='eager' and NVFP4 quantization its slower torch path"
        )
    return cxx


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def compile_library(
    source: Path, lib_name: str, what: str, *, flags: list[str] | None = None, force: bool = False
) -> Path:
    """Compile `source` into `<cache>/native/<key>/<lib_name>` (key: source, flags, compiler, CPU) and return
    the path; reused when present. Built in a temp dir and renamed, so concurrent builders never see half a
    file. Raises NativeUnavailable (no compiler, unwritable cache, compile error) naming `what`."""
    flags = DEFAULT_FLAGS if flags is None else flags
    cxx = _compiler()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise NativeUnavailable(f"the C++ compiler {cxx!r} does not run ({e}); install g++") from e
    h = hashlib.sha256(Path(source).read_bytes())  # bytes: servers may run with an ASCII locale
    h.update(
        "\0".join(["", " ".join(flags), version, _cpu_id(), platform.machine()]).encode("utf-8", "replace")
    )
    key = h.hexdigest()[:16]
    out = cache_dir() / "native" / key / lib_name
    if out.is_file() and not force:
        return out
    try:
        with atomic_dir(out.parent, replace=out.parent.exists()) as tmp:
            cmd = [cxx, *flags, "-o", str(tmp / out.name), str(source)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise NativeUnavailable(f"compiling {what} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    except OSError as e:
        if out.is_file():  # another process built it first: the same source, flags, compiler and CPU
            return out
        raise NativeUnavailable(
            f"cannot write the build directory of {what} {out.parent} ({e}); set {CACHE_ENV} "
            "to a writable directory"
        ) from e
    log.info("built %s: %s", what, out)
    return out
