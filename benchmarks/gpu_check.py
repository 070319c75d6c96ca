"""One GPU check of the whole project (`make gpu-check` / `python -m benchmarks.gpu_check`), under 8 minutes
on one H100 / H200 / B200, writing ONE report file (markdown, default build/gpu-check/report.md):

1. environment: GPU, driver, compute capability, torch / triton / tensorrt / tensorrt_llm versions;
2. `pytest -m gpu` (the Triton-lang kernels compiled for the device vs their references at Super's shapes,
   the network and runtime on CUDA) and `pytest -m trt` (TensorRT plugin registration);
3. the plugin benchmark at Super's shapes (`benchmarks/bench_plugins.py`: kernel vs torch reference,
   achieved bandwidth vs the measured copy bandwidth);
4. a TensorRT engine of the embedded model built and run (`build --onnx --trt --validate`), where
   `tensorrt` imports and the build command has `--trt`; otherwise reported as not available, with why;
5. `build --validate` (one prompt through tensorrt_llm.LLM) where `tensorrt_llm` imports.

Each step runs in a subprocess with its own time limit; a step that fails or times out is reported and the
next one runs. Exit status 1 if any step failed (a step that is not available is not a failure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (step, time limit in seconds): 30 + 200 + 60 + 150 + 60 + 60 = 560 s at the very worst, typically far less
LIMITS = {"gpu_tests": 200, "trt_tests": 60, "bench": 150, "trt_engine": 60, "validate": 60}
TAIL = 6000  # characters of each step's output kept in the report


def _run(cmd: list[str], limit: int, env: dict[str, str] | None = None) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env)
        out, rc, timed_out = p.stdout + p.stderr, p.returncode, False
    except subprocess.TimeoutExpired as e:
        raw = (e.stdout or b"") + (e.stderr or b"")
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        rc, timed_out = None, True
    return {
        "cmd": " ".join(cmd),
        "rc": rc,
        "timed_out": timed_out,
        "seconds": time.perf_counter() - t0,
        "output": out,
    }


def _version(mod: str) -> str:
    if importlib.util.find_spec(mod) is None:
        return "not installed"
    try:
        m = __import__(mod)
        return str(getattr(m, "__version__", "?"))
    except Exception as e:  # a package that is there but does not import (e.g. tensorrt without libnvinfer)
        return f"does not import ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "tensorrt", "tensorrt_llm", "onnx", "onnxruntime"):
        env[mod] = _version(mod)
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        env["capability"] = f"sm_{major}{minor}"
        env["cuda"] = torch.version.cuda
    else:
        env["gpu"] = "none (torch.cuda.is_available() is False)"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        env["nvidia-smi"] = smi.stdout.strip() or smi.stderr.strip()
    except Exception as e:
        env["nvidia-smi"] = f"unavailable ({e})"
    return env


def _pytest_summary(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if any(w in ln for w in ("passed", "failed", "error", "skipped", "no tests ran")):
            return ln.strip("= ")
    return "(no pytest summary line)"


def run_pytest(marker: str, limit: int) -> dict:
    """`pytest -m <marker>` over tests/; modules whose imports are missing on this host (server clients,
    format oracles) are reported as collection errors and the rest still run."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        marker,
        "tests",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        "-rfEs",
    ]
    r = _run(cmd, limit)
    r["summary"] = _pytest_summary(r["output"])
    failed = r["timed_out"] or (r["rc"] not in (0, 5) and " failed" in r["summary"])
    r["status"] = "FAILED" if failed else "ok"
    return r


def run_bench(limit: int, work: Path) -> dict:
    js = work / "bench_plugins.json"
    r = _run([sys.executable, "-m", "benchmarks.bench_plugins", "--json", str(js)], limit)
    r["status"] = "ok" if r["rc"] == 0 else "FAILED"
    if js.exists():
        r["json"] = json.loads(js.read_text())
    return r


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trtllm_nemotron", *args]


def _target() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major = torch.cuda.get_device_capability()[0]
    return {10: "b200", 9: "h100"}.get(major)


def run_trt_engine(limit: int, work: Path) -> dict:
    """The embedded model's TensorRT engine: `build --onnx --trt --validate` (the ONNX export and the TensorRT
    stage), where tensorrt imports and the build command offers --trt."""
    trt = _version("tensorrt")
    if trt in ("not installed",) or trt.startswith("does not import"):
        return {"status": "not available", "why": f"tensorrt {trt}"}
    help_ = _run(_cli("build", "--help"), 60)
    if "--trt" not in help_["output"]:
        return {
            "status": "not available",
            "why": "this checkout's `build` has no --trt (the ONNX/TensorRT stage)",
        }
    target = _target()
    if target is None:
        return {"status": "not available", "why": "no CUDA GPU that is a build target (sm_90 / sm_100)"}
    r = _run(
        _cli(
            "build",
            "--target",
            target,
            "--recipe",
            "bf16",
            "--onnx",
            "--trt",
            "--validate",
            "--out",
            str(work / "engine-trt"),
            "--no-progress",
        ),
        limit,
    )
    r["status"] = "ok" if r["rc"] == 0 else "FAILED"
    manifest = work / "engine-trt" / "build.json"
    if manifest.exists():
        r["build_json"] = json.loads(manifest.read_text())
    return r


def run_validate(limit: int, work: Path) -> dict:
    llm = _version("tensorrt_llm")
    if llm == "not installed" or llm.startswith("does not import"):
        return {"status": "not available", "why": f"tensorrt_llm {llm}"}
    target = _target()
    if target is None:
        return {"status": "not available", "why": "no CUDA GPU that is a build target (sm_90 / sm_100)"}
    r = _run(
        _cli(
            "build",
            "--target",
            target,
            "--recipe",
            "bf16",
            "--validate",
            "--out",
            str(work / "engine"),
            "--no-progress",
        ),
        limit,
    )
    r["status"] = "ok" if r["rc"] == 0 else "FAILED"
    return r


def _bench_table(res: dict) -> list[str]:
    if "rows" not in res or "copy_GBps" not in res:
        return ["(no GPU benchmark: " + str(res.get("device")) + ")"]
    out = [
        f"device {res['device']}, measured copy bandwidth {res['copy_GBps']:.0f} GB/s, shapes: {res['config']}",
        "",
        "| op | tokens / batch | MB moved | kernel µs | torch reference µs | speedup | kernel GB/s | of copy bw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        out.append(
            f"| {r['op']} | {r['batch']} | {r['bytes'] / 1e6:.2f} | {r['kernel_s'] * 1e6:.1f} | "
            f"{r['ref_s'] * 1e6:.1f} | {r['ref_s'] / r['kernel_s']:.1f}x | {r['kernel_GBps']:.0f} | "
            f"{r['of_copy_bw']:.0%} |"
        )
    return out


def _section(title: str, r: dict) -> list[str]:
    lines = [f"## {title}: {r['status']}", ""]
    if "why" in r:
        return lines + [f"not available: {r['why']}", ""]
    lines.append(
        f"`{r['cmd']}` ({r['seconds']:.0f} s{', TIMED OUT' if r['timed_out'] else ''}, rc {r['rc']})"
    )
    if "summary" in r:
        lines.append(f"summary: **{r['summary']}**")
    lines += ["", "```", r["output"][-TAIL:].rstrip(), "```", ""]
    return lines


def report(env: dict, steps: dict, total_s: float) -> str:
    lines = ["# GPU check (`make gpu-check`)", "", f"total {total_s:.0f} s", "", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += ["", "## Summary", "", "| step | status | seconds | detail |", "|---|---|---:|---|"]
    for name, r in steps.items():
        detail = r.get("summary") or r.get("why") or ""
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', 0):.0f} | {detail} |")
    lines.append("")
    if "json" in steps["bench"]:
        lines += ["## Plugin benchmark (Super's shapes)", ""] + _bench_table(steps["bench"]["json"]) + [""]
    titles = {
        "gpu_tests": "pytest -m gpu",
        "trt_tests": "pytest -m trt",
        "bench": "bench_plugins output",
        "trt_engine": "TensorRT engine of the embedded model",
        "validate": "build --validate (tensorrt_llm)",
    }
    for name, r in steps.items():
        lines += _section(titles[name], r)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/gpu-check/report.md", help="the report file (markdown)")
    ap.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help=f"override a step's time limit (steps and defaults: {LIMITS})",
    )
    args = ap.parse_args(argv)
    for item in args.limit:
        step, _, secs = item.partition("=")
        if step not in LIMITS or not secs.isdigit():
            ap.error(f"--limit {item!r}: expected STEP=SECONDS with STEP one of {sorted(LIMITS)}")
        LIMITS[step] = int(secs)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment()
    steps: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check.") as tmp:
        work = Path(tmp)
        steps["gpu_tests"] = run_pytest("gpu", LIMITS["gpu_tests"])
        print(f"gpu tests: {steps['gpu_tests']['summary']}", flush=True)
        steps["trt_tests"] = run_pytest("trt", LIMITS["trt_tests"])
        print(f"trt tests: {steps['trt_tests']['summary']}", flush=True)
        steps["bench"] = run_bench(LIMITS["bench"], work)
        print(f"bench: {steps['bench']['status']}", flush=True)
        steps["trt_engine"] = run_trt_engine(LIMITS["trt_engine"], work)
        print(f"trt engine: {steps['trt_engine']['status']}", flush=True)
        steps["validate"] = run_validate(LIMITS["validate"], work)
        print(f"validate: {steps['validate']['status']}", flush=True)
    text = report(env, steps, time.perf_counter() - t0)
    tmp_out = out.with_suffix(out.suffix + ".tmp")
    tmp_out.write_text(text)
    os.replace(tmp_out, out)
    print(f"report: {out}")
    return 1 if any(r["status"] == "FAILED" for r in steps.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
