"""Shared test fixtures and the tolerance table. GPU / TensorRT tests skip themselves when absent."""

from __future__ import annotations

import importlib.util
import os

import pytest

# Tests run 2 threads: CI has 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Idle OpenMP workers sleep instead of spinning: the tests run servers and subprocesses beside pytest, and
# spinning workers on 2 cores made torch steps several times slower (must be set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_trt = pytest.mark.skip(reason="needs TensorRT (import tensorrt failed)")
    has_cuda = _has_cuda()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
