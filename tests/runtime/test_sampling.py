"""SamplingParams validation and the sampler's filters (top-k, top-p, seeds)."""

from __future__ import annotations

import pytest
import torch

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime.sampling import SamplingParams, filter_logits, sample_tokens


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 101.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"stop": ("",)}, "stop"),
    ],
)
def test_invalid_options_are_refused_with_the_option_named(kw, word):
    with pytest.raises(RuntimeStateError, match=word):
        SamplingParams(**kw).validate()


def test_valid_options_pass_and_a_single_stop_string_is_wrapped():
    p = SamplingParams(max_tokens=3, temperature=0.7, top_k=5, top_p=0.9, seed=1, stop="\n\n").validate()
    assert p.stop == ("\n\n",) and not p.greedy


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    k2 = filter_logits(logits, 1.0, 2, 1.0)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False, False]]
    # softmax mass: .64 .24 .09 .03 .01 -> top_p 0.8 keeps the first two (0.64 < 0.8 before the second)
    p = filter_logits(logits, 1.0, 0, 0.8)
    assert torch.isfinite(p).tolist() == [[True, True, False, False, False]]
    # the most likely token always survives, however small top_p is
    assert torch.isfinite(filter_logits(logits, 1.0, 0, 1e-6)).sum() == 1


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))

    def draw(seed):
        p = SamplingParams(temperature=1.0, seed=seed).validate()
        return sample_tokens(logits, p, p.make_generator())

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert sample_tokens(logits, SamplingParams(), None) == logits.argmax(-1).tolist()
