"""Ahead-of-time compilation of every plugin kernel for given SMs, on any machine (no GPU needed).

    triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", sm, 32))

gives PTX (`.target sm_100a` / `sm_90a`) and a cubin (Triton's bundled ptxas). For each SM we write

    <out>/sm_<N>/<variant>.ptx, <variant>.cubin, index.json

atomically (a temp dir next to it, then rename). `index.json` lists per variant: the kernel and its PTX
entry name, signature, constexprs (fixed by the config's shapes), num_warps / shared memory, the launch
grid rule, and the scalar / input / output argument order (inputs, scalars, outputs: the TensorRT
quickly-deployable-plugin convention, so the same PTX serves `trtp.aot_impl`). The builder calls
`compile_all`; `trtllm-nemotron compile-plugins` is its CLI.

The variants and launch rules come from each op's launch.py; this module only compiles and writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_nemotron.errors import PluginError
from trtllm_nemotron.fileio import atomic_dir

FORMAT_VERSION = 1
SUPPORTED_SMS = (80, 86, 89, 90, 100, 103, 120)


def _kernel(module: str, name: str) -> Any:
    import importlib

    from triton.runtime.jit import JITFunction

    fn = getattr(importlib.import_module(module), name)
    if not isinstance(fn, JITFunction):
        raise PluginError(
            f"{module}.{name} was decorated for the interpreter (TRITON_INTERPRET is set), so it cannot be "
            "compiled; unset TRITON_INTERPRET for AOT compilation"
        )
    return fn


def _jobs(cfg: Any) -> list[dict[str, Any]]:
    """Every (variant, kernel, LaunchSpec) to compile for the config, with their index metadata."""
    from plugins.latent_moe_experts import launch as xl
    from plugins.latent_moe_routing import launch as rl
    from plugins.mamba_state_update import launch as ml

    jobs = []
    for v in ml.aot_variants(cfg):
        spec = ml.launch_spec(batch=1, T=1, **v)
        jobs.append(
            dict(
                name=ml.variant_name(v),
                op="mamba_state_update",
                module="plugins.mamba_state_update.kernel",
                spec=spec,
                grid=ml.GRID_RULE,
                inputs=ml.INPUTS,
                scalars=ml.SCALARS,
                outputs=ml.OUTPUTS,
            )
        )
    for name, spec in rl.aot_variants(cfg):
        route = spec.kernel == rl.ROUTE_KERNEL
        jobs.append(
            dict(
                name=name,
                op="latent_moe_routing",
                module="plugins.latent_moe_routing.kernel",
                spec=spec,
                grid=rl.ROUTE_GRID_RULE if route else rl.PERM_GRID_RULE,
                inputs=rl.ROUTE_INPUTS if route else rl.PERM_INPUTS,
                scalars=rl.ROUTE_SCALARS if route else rl.PERM_SCALARS,
                outputs=rl.ROUTE_OUTPUTS if route else rl.PERM_OUTPUTS,
            )
        )
    for name, spec in xl.aot_variants(cfg):
        jobs.append(
            dict(
                name=name,
                op="latent_moe_experts",
                module="plugins.latent_moe_experts.kernel",
                spec=spec,
                grid=xl.GRID_RULE,
                inputs=xl.INPUTS_NVFP4 if spec.kernel == xl.KERNEL_NVFP4 else xl.INPUTS,
                scalars=xl.SCALARS,
                outputs=xl.OUTPUTS,
            )
        )
    return jobs


def compile_spec(fn: Any, spec: Any, sm: int) -> Any:
    """Compile one kernel for `sm` (no GPU needed); returns triton's CompiledKernel (asm["ptx"], asm["cubin"])."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # spec.signature is ordered like the kernel's parameters (inputs, scalars, outputs, constexprs) and
    # named by the launch tables; bind it to the kernel's own parameter names by position.
    if len(fn.arg_names) != len(spec.signature):
        raise PluginError(
            f"{spec.kernel}: {len(fn.arg_names)} parameters but {len(spec.signature)} in its launch spec"
        )
    signature = dict(zip(fn.arg_names, spec.signature.values(), strict=True))
    for name, kind in signature.items():
        if kind == "constexpr" and name not in spec.constexprs:
            raise PluginError(f"{spec.kernel}: constexpr {name} missing from its launch spec")
    src = ASTSource(fn=fn, signature=signature, constexprs=dict(spec.constexprs))
    try:
        options = {"num_warps": spec.num_warps, "enable_fp_fusion": True}  # FMA, the JIT default
        return triton.compile(src, target=GPUTarget("cuda", int(sm), 32), options=options)
    except Exception as e:  # compiler errors carry the MLIR diagnostics
        raise PluginError(f"compiling {spec.kernel} for sm_{sm} failed: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class AotLaunch:
    """What a TensorRT `@trtp.aot_impl` returns, without TensorRT types: the kernel's PTX entry name, the
    PTX, launch dimensions (grid entries may be symbolic shape expressions) and the extra int32 scalar
    arguments that go between the inputs and the outputs."""

    kernel_name: bytes
    ptx: bytes
    grid: tuple[Any, Any, Any]
    block: tuple[int, int, int]
    shared_mem: int
    extra_args: tuple[Any, ...]


SM_ENV = "TRTLLM_NEMOTRON_PLUGIN_SM"


def target_sm() -> int:
    """The SM the TensorRT plugins compile for: $TRTLLM_NEMOTRON_PLUGIN_SM (e.g. 100 to build a B200 engine's
    kernels elsewhere), else the current GPU's."""
    raw = os.environ.get(SM_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) not in SUPPORTED_SMS:
            raise PluginError(
                f"{SM_ENV}={raw!r} is not a supported SM; expected one of {list(SUPPORTED_SMS)}"
            )
        return int(raw)
    try:
        from triton.runtime import driver

        return int(driver.active.get_current_target().arch)
    except Exception as e:
        raise PluginError(
            f"no GPU to compile the plugin kernels for ({type(e).__name__}: {e}); set {SM_ENV}=100 (or 90)"
        ) from e


def check_aot_abi(ck: Any, spec: Any) -> None:
    """What a TensorRT AOT launch needs from a compiled kernel, asserted: TensorRT passes the input pointers,
    the int32 extra arguments, then the output pointers, and nothing else. So the PTX entry must take exactly
    the spec's non-constexpr parameters in that order (pointers `.u64`, int32 scalars `.u32`/`.s32`) plus at
    most Triton's two trailing hidden scratch pointers, which must then never be used: global and profile
    scratch sizes 0 (TensorRT leaves those parameters unset)."""
    entry = ck.metadata.name
    m = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\((.*?)\)", ck.asm["ptx"], re.DOTALL)
    if not m:
        raise PluginError(f"{spec.kernel}: no .entry {entry} in its PTX")
    params = re.findall(r"\.param\s+(\.\w+)", m.group(1))
    kinds = [k for k in spec.signature.values() if k != "constexpr"]
    want = [".u64" if k.startswith("*") else ".u32" for k in kinds]
    got = [".u32" if p == ".s32" else p for p in params]
    if got[: len(want)] != want or len(got) - len(want) not in (0, 2) or set(got[len(want) :]) - {".u64"}:
        raise PluginError(
            f"{spec.kernel}: PTX parameters {params} do not match the AOT order inputs -> int32 scalars -> "
            f"outputs {want} (+ at most 2 hidden scratch pointers); a parameter was specialised or reordered"
        )
    for what in ("global_scratch_size", "profile_scratch_size"):
        size = int(getattr(ck.metadata, what, 0) or 0)
        if size:
            raise PluginError(
                f"{spec.kernel}: Triton gave it {what}={size}, but TensorRT's AOT launcher passes no scratch "
                "buffer; remove the feature that needs it (device-side TMA descriptors, printf, profiling)"
            )


def aot_launch(module: str, spec: Any, sm: int | None = None) -> AotLaunch:
    """Compile `spec.kernel` from `module` for `sm` (default `target_sm()`) and return its AOT launch."""
    if sm is None:
        sm = target_sm()
    ck = compile_spec(_kernel(module, spec.kernel), spec, sm)
    check_aot_abi(ck, spec)
    return AotLaunch(
        kernel_name=ck.metadata.name.encode(),
        ptx=ck.asm["ptx"].encode(),
        grid=tuple(spec.grid),
        block=(ck.metadata.num_warps * 32, 1, 1),
        shared_mem=int(ck.metadata.shared),
        extra_args=tuple(spec.scalars),
    )


def ptx_target(ptx: str) -> str:
    m = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE)
    return m.group(1).rstrip(",") if m else ""


def ptx_param_count(ptx: str, entry: str) -> int:
    """Number of `.param`s of `.entry <entry>`. Triton >= 3.3 appends 2 hidden pointer parameters (global
    and profile scratch) after the declared ones; the index records them as `hidden_params`."""
    m = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\((.*?)\)", ptx, re.DOTALL)
    return m.group(1).count(".param") if m else -1


def cuobjdump_path() -> Path:
    """The cuobjdump bundled in the triton wheel (triton/backends/nvidia/bin/)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise PluginError(f"cuobjdump not found at {path}; reinstall triton (pip install -e '.[kernels]')")
    return path


def sass_arch(sass: str) -> str:
    """The architecture a `cuobjdump -sass` listing names (`code for sm_100a` -> "sm_100a")."""
    m = re.search(r"code for (sm_\w+)", sass)
    return m.group(1) if m else ""


def disassemble(cubin: str | Path) -> str:
    """SASS of a cubin (`cuobjdump -sass`), which names the architecture (`arch = sm_100a`)."""
    out = subprocess.run([str(cuobjdump_path()), "-sass", str(cubin)], capture_output=True, text=True)
    if out.returncode != 0:
        raise PluginError(f"cuobjdump failed on {cubin}: {out.stderr.strip()}")
    return out.stdout


def _config_summary(cfg: Any) -> dict[str, Any]:
    keys = (
        "mamba_num_heads",
        "mamba_head_dim",
        "ssm_state_size",
        "n_groups",
        "conv_kernel",
        "n_routed_experts",
        "num_experts_per_tok",
        "n_group",
        "topk_group",
        "norm_topk_prob",
        "routed_scaling_factor",
        "moe_intermediate_size",
        "moe_latent_size",
    )
    return {k: getattr(cfg, k) for k in keys}


def _compile_sm(jobs: list[dict[str, Any]], sm: int, cfg: Any, dest: Path, bar: Any) -> dict[str, Any]:
    import triton

    kernels = []
    for job in jobs:
        spec = job["spec"]
        t0 = time.perf_counter()
        ck = compile_spec(_kernel(job["module"], spec.kernel), spec, sm)
        check_aot_abi(ck, spec)
        ptx, cubin = ck.asm["ptx"], ck.asm["cubin"]
        target = ptx_target(ptx)
        if target not in (f"sm_{sm}", f"sm_{sm}a"):
            raise PluginError(f"{job['name']}: PTX targets {target!r}, expected sm_{sm}[a]")
        (dest / f"{job['name']}.ptx").write_text(ptx)
        (dest / f"{job['name']}.cubin").write_bytes(cubin)
        kernels.append(
            {
                "name": job["name"],
                "op": job["op"],
                "kernel": spec.kernel,
                "entry": ck.metadata.name,
                "ptx": f"{job['name']}.ptx",
                "cubin": f"{job['name']}.cubin",
                "cubin_sha256": hashlib.sha256(cubin).hexdigest(),
                "target": target,
                "signature": dict(spec.signature),
                "constexprs": dict(spec.constexprs),
                "num_warps": ck.metadata.num_warps,
                "block": [ck.metadata.num_warps * 32, 1, 1],
                "shared_mem": ck.metadata.shared,
                "grid": job["grid"],
                "hidden_params": ptx_param_count(ptx, ck.metadata.name)
                - len(job["inputs"])
                - len(job["scalars"])
                - len(job["outputs"]),
                # the hidden scratch pointers are never dereferenced when no global scratch is used, so a
                # launcher that does not pass them (TensorRT QDP with triton < 3.3 conventions) is safe
                "global_scratch_size": int(getattr(ck.metadata, "global_scratch_size", 0)),
                "inputs": list(job["inputs"]),
                "scalars": list(job["scalars"]),
                "outputs": list(job["outputs"]),
                "compile_s": round(time.perf_counter() - t0, 3),
            }
        )
        bar.update(1)
    from plugins.ptx import driver_requirement, ptx_isa_version

    isas = sorted({ptx_isa_version((dest / k["ptx"]).read_text()) for k in kernels})
    if len(isas) != 1 or not isas[0]:
        raise PluginError(f"sm_{sm}: the kernels' PTX ISA versions are {isas}, expected one `.version` line")
    return {
        "format": FORMAT_VERSION,
        "sm": sm,
        "triton": triton.__version__,
        "ptx_isa": isas[0],
        "driver": driver_requirement(isas[0]),  # the driver the PTX needs (plugins/ptx.py)
        "config": _config_summary(cfg),
        "kernels": kernels,
    }


def compile_all(
    out_dir: str | os.PathLike[str],
    sms: tuple[int, ...] = (100, 90),
    *,
    config: Any = None,
    progress: bool = True,
) -> dict:
    """Compile every plugin kernel for each SM into `<out_dir>/sm_<N>/`; returns {"sm_<N>": index, ...}.

    `config` (a NemotronHConfig, default the Super preset) fixes the shapes that become constexprs.
    Needs triton, not a GPU.
    """
    from tqdm import tqdm

    from trtllm_nemotron.config import preset

    cfg = config if config is not None else preset("super-120b")
    sms = tuple(int(s) for s in sms)
    bad = [s for s in sms if s not in SUPPORTED_SMS]
    if bad or not sms:
        raise PluginError(
            f"unsupported SM {bad or '(none)'}; expected some of {list(SUPPORTED_SMS)} (e.g. 100, 90)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = _jobs(cfg)
    result: dict[str, Any] = {}
    with tqdm(
        total=len(jobs) * len(sms),
        desc="compile plugins",
        unit="kernel",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        for sm in sms:
            with atomic_dir(out / f"sm_{sm}") as tmp:
                index = _compile_sm(jobs, sm, cfg, tmp, bar)
                (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
            result[f"sm_{sm}"] = index
    return result


def load_index(out_dir: str | os.PathLike[str], sm: int) -> dict[str, Any]:
    """Read `<out_dir>/sm_<sm>/index.json` (what the runtime / TensorRT plugin loader consumes)."""
    path = Path(out_dir) / f"sm_{sm}" / "index.json"
    if not path.exists():
        raise PluginError(
            f"no AOT index at {path}; run `trtllm-nemotron compile-plugins --sm {sm} --out {out_dir}`"
        )
    return json.loads(path.read_text())
