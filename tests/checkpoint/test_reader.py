"""The lazy reader: index and single files, name variants, fused experts, and every open-time error."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.checkpoint.conftest import random_state, small_config, write_checkpoint
from trtllm_nemotron.checkpoint import open_checkpoint
from trtllm_nemotron.checkpoint.reader import normalize_name
from trtllm_nemotron.errors import CheckpointError, ConfigError


def test_index_sharded_reads_every_tensor_bit_exact(small_ckpt):
    path, cfg, tensors = small_ckpt
    with open_checkpoint(path) as r:
        assert len(r.files) == 3
        assert sorted(r.names()) == sorted(tensors)
        assert r.config == cfg
        assert r.quantization is None
        for name, t in tensors.items():
            assert r.shape(name) == tuple(t.shape)
            assert r.dtype(name) == t.dtype
            assert r.nbytes(name) == t.nbytes
            assert name in r
            assert torch.equal(r.get(name), t)
            assert r.source_name(name) == name
        assert r.get("lm_head.weight", dtype=torch.float32).dtype == torch.float32
        assert "nope" not in r
        with pytest.raises(CheckpointError, match="not in checkpoint"):
            r.get("nope")
    with pytest.raises(CheckpointError, match="closed"):
        r.get("lm_head.weight")


def test_single_and_multiple_files_without_index(tmp_path):
    cfg = small_config()
    tensors = random_state(cfg)
    for shards in (1, 2):
        path = write_checkpoint(tmp_path / f"s{shards}", cfg, tensors, shards=shards, index=False)
        with open_checkpoint(path) as r:
            assert len(r.files) == shards
            assert sorted(r.names()) == sorted(tensors)
            assert torch.equal(r.get("backbone.embeddings.weight"), tensors["backbone.embeddings.weight"])


@pytest.mark.parametrize("prefix", ["model.", "language_model.model.", "language_model.backbone."])
def test_prefix_variants_are_normalised(tmp_path, prefix):
    cfg = small_config()
    tensors = random_state(cfg)
    stored = {}
    for name, t in tensors.items():
        key = prefix + name.removeprefix("backbone.") if name.startswith("backbone.") else name
        if name == "backbone.embeddings.weight":
            key = prefix + "embedding.weight"  # older checkpoints' singular name
        stored[key] = t
    path = write_checkpoint(tmp_path / "c", cfg, stored)
    with open_checkpoint(path) as r:
        assert sorted(r.names()) == sorted(tensors)
        assert r.source_name("backbone.embeddings.weight") == prefix + "embedding.weight"
        assert torch.equal(
            r.get("backbone.layers.0.mixer.in_proj.weight"), tensors["backbone.layers.0.mixer.in_proj.weight"]
        )


def test_normalize_name_table():
    assert normalize_name("model.layers.3.mixer.A_log") == "backbone.layers.3.mixer.A_log"
    assert normalize_name("language_model.lm_head.weight") == "lm_head.weight"
    assert normalize_name("backbone.embedding.weight") == "backbone.embeddings.weight"
    assert normalize_name("mtp.layers.0.enorm.weight") == "mtp.layers.0.enorm.weight"


@pytest.mark.parametrize("suffix", ["", ".weight"])
def test_fused_experts_are_split_lazily(tmp_path, suffix):
    cfg = small_config()
    tensors = random_state(cfg)
    stored = {}
    fused: dict[str, list] = {}
    for name, t in tensors.items():
        if ".experts." in name:
            pre, rest = name.split(".experts.")
            e, proj = rest.split(".")[:2]
            fused.setdefault(f"{pre}.experts.{proj}", []).append((int(e), t))
        else:
            stored[name.replace("backbone.", "model.", 1)] = t
    for key, parts in fused.items():  # HF v5 MergeModulelist layout: [E, I, X] / [E, X, I]
        stored[key.replace("backbone.", "model.", 1) + suffix] = torch.stack([t for _, t in sorted(parts)])
    path = write_checkpoint(tmp_path / "f", cfg, stored, shards=2)
    with open_checkpoint(path) as r:
        assert sorted(r.names()) == sorted(tensors)
        name = "backbone.layers.1.mixer.experts.3.up_proj.weight"
        assert r.shape(name) == (cfg.moe_intermediate_size, cfg.expert_dim)
        assert r.source_name(name) == "model.layers.1.mixer.experts.up_proj" + suffix
        for n, t in tensors.items():
            assert torch.equal(r.get(n), t), n


def test_duplicates_after_normalisation(tmp_path):
    cfg = small_config()
    tensors = random_state(cfg)
    tensors["model.norm_f.weight"] = tensors["backbone.norm_f.weight"].clone()
    path = write_checkpoint(tmp_path / "d", cfg, tensors)
    with pytest.raises(CheckpointError, match=r"1 tensor names occur more than once.*backbone.norm_f.weight"):
        open_checkpoint(path)


def test_missing_dir_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json") as e:
        open_checkpoint(tmp_path / "empty")
    assert isinstance(e.value, ConfigError)  # also a config problem


def test_no_safetensors(tmp_path):
    cfg = small_config()
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(CheckpointError, match=r"no \*.safetensors"):
        open_checkpoint(tmp_path)


def test_bad_index_json(small_ckpt):
    path, _, _ = small_ckpt
    (path / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        open_checkpoint(path)
    (path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="weight_map"):
        open_checkpoint(path)


def test_index_points_to_missing_shard(small_ckpt):
    path, _, _ = small_ckpt
    (path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"1 shard file\(s\) that do not exist.*model-00002-of-00003"):
        open_checkpoint(path)


def test_index_and_shard_out_of_sync(small_ckpt):
    path, _, _ = small_ckpt
    idx = json.loads((path / "model.safetensors.index.json").read_text())
    idx["weight_map"]["backbone.extra.weight"] = "model-00001-of-00003.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="out of sync"):
        open_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupt_shard(small_ckpt, damage):
    path, _, _ = small_ckpt
    shard = path / "model-00003-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="model-00003-of-00003.safetensors is truncated or corrupt"):
        open_checkpoint(path)


def test_quantization_config_sources(small_ckpt):
    path, _, _ = small_ckpt
    raw = json.loads((path / "config.json").read_text())
    raw["quantization_config"] = {"quant_algo": "FP8", "quant_method": "modelopt"}
    (path / "config.json").write_text(json.dumps(raw))
    with open_checkpoint(path) as r:
        assert r.quantization == {"quant_algo": "FP8", "quant_method": "modelopt"}
    hq = {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "NVFP4", "group_size": 16}}
    (path / "hf_quant_config.json").write_text(json.dumps(hq))
    with open_checkpoint(path) as r:
        assert r.quantization == hq  # hf_quant_config.json wins


def test_hf_v5_special_float_encoding(small_ckpt):
    """transformers 5 writes inf as {"__float__": "Infinity"} (e.g. time_step_limit)."""
    path, _, _ = small_ckpt
    raw = json.loads((path / "config.json").read_text())
    raw["time_step_limit"] = [0.0, {"__float__": "Infinity"}]
    (path / "config.json").write_text(json.dumps(raw))
    with open_checkpoint(path) as r:
        assert r.config.time_step_limit == (0.0, float("inf"))


def test_fp8_and_uint8_dtypes(tmp_path):
    cfg = small_config()
    tensors = random_state(cfg)
    tensors["x.weight"] = torch.randn(4, 8).to(torch.float8_e4m3fn)
    tensors["y.weight"] = torch.randint(0, 255, (4, 4), dtype=torch.uint8)
    path = tmp_path / "q"
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    with open_checkpoint(path) as r:
        assert r.dtype("x.weight") == torch.float8_e4m3fn and r.nbytes("x.weight") == 32
        assert torch.equal(r.get("x.weight").view(torch.uint8), tensors["x.weight"].view(torch.uint8))
        assert r.dtype("y.weight") == torch.uint8
