"""Fixtures for the serving tests: engine dirs (assembled or built) and one real tritonserver per session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml


def assemble_engine(model_dir: Path, out: Path, target: str = "cpu") -> Path:
    """An engine dir in the builder's layout from a HF checkpoint: build.json + checkpoint/ (+ trtllm/ for GPUs)."""
    out.mkdir(parents=True)
    shutil.copytree(model_dir, out / "checkpoint")
    gpu = target != "cpu"
    (out / "build.json").write_text(json.dumps({"format_version": 1, "target": {"name": target, "sm": 100 if gpu else None},
                                                "mtp": {"max_draft_len": 0}}))
    if gpu:
        (out / "trtllm").mkdir()
        (out / "trtllm" / "llm_api.yaml").write_text(yaml.safe_dump({
            "backend": "pytorch", "tensor_parallel_size": 1, "trust_remote_code": True,
            "kv_cache_config": {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.8},
            "speculative_config": {"decoding_type": "MTP", "max_draft_len": 3}}))
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
