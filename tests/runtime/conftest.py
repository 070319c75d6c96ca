"""Runtime test fixtures: a random tiny checkpoint (make_tiny, seed 0) and engines over it, per session.

The engines run each decode-step backend that works on any CPU -- the native C++ step and the eager torch step
-- so every generation test (MTP, batching, cancellation, state after a rejected draft) checks both."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from trtllm_nemotron.checkpoint.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("runtime") / "tiny", seed=0)


@pytest.fixture(scope="session", params=["native", "eager"])
def backend(request):
    return request.param


@pytest.fixture(scope="session")
def engine0(tiny_dir, backend):
    from trtllm_nemotron.runtime import Engine

    return Engine.load(tiny_dir, mtp=0, max_batch_size=8, max_seq_len=256, backend=backend)


@pytest.fixture(scope="session")
def engine3(tiny_dir, backend):
    from trtllm_nemotron.runtime import Engine

    return Engine.load(tiny_dir, mtp=3, max_batch_size=8, max_seq_len=256, backend=backend)


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread is faster than two (and immune to a busy machine's contention)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
