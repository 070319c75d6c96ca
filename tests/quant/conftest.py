"""Fixtures: one tiny random checkpoint (make_tiny, 4 experts) and its quantized exports, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtllm_nemotron.config import NemotronHConfig, preset

CALIB = {"calib_samples": 2, "calib_seq_len": 16}


def small_config() -> NemotronHConfig:
    """The tiny preset (Super's layer kinds, LatentMoE, grouped routing, one MTP depth) with 4 experts."""
    return preset("tiny").replace(n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1)


@pytest.fixture(scope="session")
def tiny_src(tmp_path_factory) -> Path:
    from trtllm_nemotron.checkpoint.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("quant") / "src", seed=0, config=small_config())


@pytest.fixture(scope="session")
def quantized(tiny_src, tmp_path_factory):
    """recipe -> output dir (quantized lazily, once)."""
    from trtllm_nemotron.quant import quantize_checkpoint

    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("quant_out")

    def get(recipe: str) -> Path:
        if recipe not in cache:
            out = root / recipe
            quantize_checkpoint(tiny_src, out, recipe=recipe, progress=False, accuracy=False, **CALIB)
            cache[recipe] = out
        return cache[recipe]

    return get
