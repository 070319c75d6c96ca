"""The compiled decode step (torch.compile, inductor C++ wrapper) generates what eager mode generates."""

from __future__ import annotations

import torch

from trtllm_nemotron.runtime import Engine, SamplingParams


def test_compiled_step_equals_eager(tiny_dir):
    eng = Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64)
    p = SamplingParams(max_tokens=12, ignore_eos=True)

    def one_step() -> torch.Tensor:  # logits of token 7 at position 0 of a fresh slot
        eng.pool.cache.reset([0])
        with torch.inference_mode():
            return eng._step([[7]], [0], torch.tensor([0]), False)[1]

    eager, ref = eng.generate("def f(x):", p), one_step()
    eng.enable_compile()
    compiled, got = eng.generate("def f(x):", p), one_step()
    assert eng._step_fn is not None and eng._compile
    assert compiled.token_ids == eager.token_ids
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
