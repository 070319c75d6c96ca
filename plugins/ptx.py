"""Which NVIDIA driver the AOT-compiled plugin PTX needs, and whether this host's driver has it.

The plugin kernels are compiled ahead of time by Triton (`plugins.aot`); their PTX carries a `.version X.Y`
line, the PTX ISA version. A driver JIT-compiles PTX only up to the ISA of the CUDA release it ships with
(CUDA's minor-version compatibility covers SASS, not PTX JIT; CUDA Compatibility guide, "Application
Considerations for Minor Version Compatibility": PTX from a newer toolkit needs a driver that knows it).
So the PTX fixes a minimum CUDA driver API version, and from it a minimum driver.

PTX ISA -> CUDA release is the inverse of Triton's own mapping, `ptx_get_version(cuda_version)` in
triton/backends/nvidia/compiler.py (checked in triton 3.9.0): CUDA 12.x < 12.6 -> PTX 8.x, CUDA 12.6+ -> PTX
8.(x-1), CUDA 13.x -> PTX 9.x, CUDA 11.x -> PTX 7.x. Triton emits the ISA of its bundled ptxas, so triton
3.9 (ptxas of CUDA 13.4) writes `.version 9.4`; NVIDIA's plugin sample pins triton 3.5 (PTX 8.x).

CUDA release -> minimum Linux driver: NVIDIA CUDA Toolkit release notes, table "CUDA Toolkit and Corresponding
Driver Versions" (GA drivers, Linux x86_64), recorded below for the releases it lists up to CUDA 13.0; a newer
release is reported by its CUDA version alone ("a driver that supports CUDA 13.4"), which `nvidia-smi` prints
as "CUDA Version" and `cuDriverGetVersion` returns -- the comparison `inspect` makes.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from typing import Any

# CUDA Toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions" (Linux x86_64, GA)
MIN_LINUX_DRIVER = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}
SOURCE = (
    "PTX ISA -> CUDA: inverse of triton ptx_get_version (triton/backends/nvidia/compiler.py); CUDA -> driver: "
    "NVIDIA CUDA Toolkit release notes, 'CUDA Toolkit and Corresponding Driver Versions'"
)


def ptx_isa_version(ptx: str) -> str:
    """The `.version X.Y` of a PTX text ("" when absent)."""
    m = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, re.MULTILINE)
    return m.group(1) if m else ""


def _ver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def cuda_for_ptx_isa(isa: str) -> str:
    """The first CUDA release whose driver JIT-compiles PTX ISA `isa` (inverse of triton's mapping)."""
    major, minor = _ver(isa)[:2]
    if major >= 9:
        return f"{13 + (major - 9)}.{minor}"
    if major == 8:
        return f"12.{minor}" if minor < 6 else f"12.{minor + 1}"
    if major == 7:
        return f"11.{minor}"
    raise ValueError(f"PTX ISA {isa} is older than any CUDA this project supports")


def driver_requirement(isa: str) -> dict[str, Any]:
    """What build.json records for PTX ISA `isa`: the CUDA driver API version and the minimum Linux driver."""
    cuda = cuda_for_ptx_isa(isa)
    known = MIN_LINUX_DRIVER.get(cuda)
    text = f"a driver that supports CUDA {cuda}" + (f" (Linux >= {known})" if known else "")
    return {
        "ptx_isa": isa,
        "min_cuda_driver_api": cuda,
        "min_linux_driver": known,
        "needs": text,
        "source": SOURCE,
    }


def host_driver() -> dict[str, str] | None:
    """This host's driver: {"cuda": "13.0", "driver": "580.65.06"}; None without an NVIDIA driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    v = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
        return None
    out = {"cuda": f"{v.value // 1000}.{(v.value % 1000) // 10}", "driver": ""}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if smi.returncode == 0 and smi.stdout.strip():
            out["driver"] = smi.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def driver_warning(requirement: dict[str, Any], host: dict[str, str] | None) -> str | None:
    """A warning when `host`'s driver cannot JIT the plugin PTX `requirement` describes (None: fine/unknown)."""
    if not host or not requirement or not requirement.get("min_cuda_driver_api"):
        return None
    need = requirement["min_cuda_driver_api"]
    if _ver(host.get("cuda", "0")) >= _ver(need):
        return None
    drv = f"driver {host['driver']} " if host.get("driver") else "the driver "
    return (
        f"the plugin PTX is ISA {requirement.get('ptx_isa')}, which needs {requirement.get('needs')}; "
        f"this host's {drv}supports CUDA {host.get('cuda')}. Upgrade the driver, or rebuild the engine with "
        "a triton whose ptxas matches the driver (NVIDIA's plugin sample pins triton 3.5)"
    )


def engine_requirements(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"sm_100": requirement, ...} from a build.json's plugin summary (empty for CPU builds / old manifests)."""
    summary = ((manifest.get("plugins") or {}).get("summary")) or {}
    return {sm: idx["driver"] for sm, idx in summary.items() if isinstance(idx, dict) and idx.get("driver")}
