"""The engine on a CUDA device (the eager backend: the reference network with the plugin kernels on the GPU)
matches the CPU."""

from __future__ import annotations

import pytest
import torch

from trtllm_nemotron.runtime import Engine, SamplingParams


@pytest.mark.gpu
@pytest.mark.parametrize("mtp", [0, 2])
def test_cuda_engine_greedy_matches_cpu(tiny_dir, engine0, mtp):
    eng = Engine.load(tiny_dir, device="cuda", dtype=torch.float32, mtp=mtp, max_batch_size=2, max_seq_len=64)
    p = SamplingParams(max_tokens=8, ignore_eos=True)
    assert eng.generate("def f(x):", p).token_ids == engine0.generate("def f(x):", p).token_ids
    seeded = SamplingParams(max_tokens=8, temperature=0.8, seed=3, ignore_eos=True)
    assert eng.generate("x = [", seeded).token_ids == eng.generate("x = [", seeded).token_ids
