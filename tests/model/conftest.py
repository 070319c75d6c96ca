"""Model tests run torch single-threaded: their ops are tiny, and on a loaded 2-core machine OpenMP's
spinning threads made them ~70x slower (measured: tiny forward 3.7 s with 2 threads vs 0.05 s with 1)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
