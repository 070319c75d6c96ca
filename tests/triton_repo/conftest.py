"""Fixtures for the serving tests: engine dirs (assembled or built) and one real tritonserver per session."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


def assemble_engine(model_dir: Path, out: Path, target: str = "cpu") -> Path:
    """An engine dir in the builder's layout from a HF checkpoint: build.json + checkpoint/ (+ trtllm/ for GPUs)."""
    out.mkdir(parents=True)
    shutil.copytree(model_dir, out / "checkpoint")
    gpu = target != "cpu"
    (out / "build.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "target": {"name": target, "sm": 100 if gpu else None},
                "mtp": {"max_draft_len": 0},
            }
        )
    )
    if gpu:
        (out / "trtllm").mkdir()
        (out / "trtllm" / "llm_api.yaml").write_text(
            yaml.safe_dump(
                {
                    "backend": "pytorch",
                    "tensor_parallel_size": 1,
                    "trust_remote_code": True,
                    "kv_cache_config": {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.8},
                    "speculative_config": {"decoding_type": "MTP", "max_draft_len": 3},
                }
            )
        )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from builder.defaults import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def cpu_engine(tiny_model_dir, tmp_path_factory) -> Path:
    return assemble_engine(tiny_model_dir, tmp_path_factory.mktemp("eng") / "cpu_engine", "cpu")


@pytest.fixture(scope="session")
def b200_engine(tiny_model_dir, tmp_path_factory) -> Path:
    return assemble_engine(tiny_model_dir, tmp_path_factory.mktemp("eng") / "b200_engine", "b200")


@dataclass
class Served:
    engine_dir: Path
    repo: Path
    proc: subprocess.Popen
    log: Path
    http: str
    grpc: str
    metrics: str
    shm_before: set
    openai: str | None = None  # base URL of the OpenAI front (http://host:port/v1) when started with one


def serve_repo(engine_dir: Path, repo: Path, tmp: Path, *, openai: bool = False):
    """Run `trtllm-nemotron serve REPO` (with `--openai-port` when `openai`) until ready; a generator that
    yields the `Served` and stops the server (SIGINT) afterwards unless a test already did."""
    import clients
    from triton_repo.server import _shm_regions, free_ports

    h, g, m, o = free_ports(4)
    log = tmp / "serve.log"
    shm_before = _shm_regions()
    cmd = [
        sys.executable,
        "-m",
        "trtllm_nemotron",
        "serve",
        str(repo),
        "--http-port",
        str(h),
        "--grpc-port",
        str(g),
        "--metrics-port",
        str(m),
    ] + (["--openai-port", str(o)] if openai else [])
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    s = Served(
        engine_dir,
        repo,
        proc,
        log,
        f"127.0.0.1:{h}",
        f"127.0.0.1:{g}",
        f"http://127.0.0.1:{m}/metrics",
        shm_before,
        f"http://127.0.0.1:{o}/v1" if openai else None,
    )
    deadline = time.monotonic() + 300
    while not clients.server_ready(s.http, "http", timeout=2) or (
        openai and "ready: OpenAI API" not in log.read_text()
    ):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not become ready (rc={proc.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    yield s
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
