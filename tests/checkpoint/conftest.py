"""Fixtures for checkpoint tests: tiny synthetic HF checkpoints written with safetensors directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trtllm_nemotron.config import NemotronHConfig, expected_tensors, preset


def small_config() -> NemotronHConfig:
    """The tiny preset's architecture with 4 experts, so hand-made checkpoints stay small."""
    return preset("tiny").replace(n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1)


def random_state(cfg: NemotronHConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, spec in expected_tensors(cfg).items():
        t = torch.randn(spec.shape, generator=g)
        out[name] = t.float() if spec.dtype == "float32" else t.to(torch.bfloat16)
    return out


def write_checkpoint(
    path: Path,
    cfg: NemotronHConfig,
    tensors: dict[str, torch.Tensor],
    shards: int = 1,
    index: bool = True,
    config_dict: dict | None = None,
) -> Path:
    """Write `tensors` round-robin into `shards` files (+ index) and config.json, without our writer."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors" if index else f"part{i}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i::shards]}
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    if index:
        total = sum(t.nbytes for t in tensors.values())
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        )
    (path / "config.json").write_text(json.dumps(config_dict if config_dict is not None else cfg.to_dict()))
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from trtllm_nemotron.checkpoint.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture
def small_ckpt(tmp_path) -> tuple[Path, NemotronHConfig, dict[str, torch.Tensor]]:
    cfg = small_config()
    tensors = random_state(cfg)
    return write_checkpoint(tmp_path / "ckpt", cfg, tensors, shards=3), cfg, tensors
