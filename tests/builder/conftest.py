"""Builder fixtures: one tiny checkpoint per session and a private build cache (quantized checkpoints and
plugin kernels are reused across the target x recipe builds, as they are for users)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("build-cache")
    old = os.environ.get("TRTLLM_NEMOTRON_CACHE_DIR")
    os.environ["TRTLLM_NEMOTRON_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TRTLLM_NEMOTRON_CACHE_DIR", None)
    else:
        os.environ["TRTLLM_NEMOTRON_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, build_cache):
    from trtllm_nemotron.checkpoint.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("src") / "tiny", seed=0)
