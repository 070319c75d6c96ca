"""Sharded writer and atomic save: bit-exact round trips at several shard sizes, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch

from tests.checkpoint.conftest import random_state, small_config
from trtllm_nemotron.checkpoint import ShardedWriter, open_checkpoint, save_checkpoint
from trtllm_nemotron.errors import CheckpointError


def _mixed_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "a.bf16": torch.randn(33, 17, generator=g).to(torch.bfloat16),
        "b.fp32": torch.randn(5, 7, 3, generator=g),
        "c.u8": torch.randint(0, 256, (40, 8), generator=g, dtype=torch.uint8),
        "d.fp8": torch.randn(16, 16, generator=g).to(torch.float8_e4m3fn),
        "e.scalar": torch.tensor(0.125),
        "f.fp16": torch.randn(100, generator=g).half(),
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize("max_shard_bytes", [1, 600, 2000, 5 * 2**30])
def test_sharded_writer_index_and_bit_exact(tmp_path, max_shard_bytes):
    tensors = _mixed_dtypes()
    with ShardedWriter(tmp_path, max_shard_bytes=max_shard_bytes) as w:
        for n, t in tensors.items():
            w.add(n, t)
        index = w.close()
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    n = len(files)
    assert files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not list(tmp_path.glob("*.tmp"))
    if max_shard_bytes == 1:
        assert n == len(tensors)  # one tensor per shard when every tensor exceeds the cap
    if max_shard_bytes == 5 * 2**30:
        assert n == 1  # a single shard is still indexed
    assert json.loads((tmp_path / "model.safetensors.index.json").read_text()) == index
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    assert set(index["weight_map"]) == set(tensors)
    from safetensors import safe_open

    for fname in files:  # every shard respects the cap unless it holds a single tensor
        with safe_open(str(tmp_path / fname), "pt") as f:
            keys = list(f.keys())
            assert f.metadata() == {"format": "pt"}
            size = sum(tensors[k].nbytes for k in keys)
            assert size <= max_shard_bytes or len(keys) == 1


@pytest.mark.parametrize("max_shard_bytes", [3000, 50_000, 5 * 2**30])
def test_reader_writer_reader_round_trip(tmp_path, max_shard_bytes):
    cfg = small_config()
    tensors = random_state(cfg)
    tensors["backbone.layers.0.mixer.in_proj.weight"] = tensors[
        "backbone.layers.0.mixer.in_proj.weight"
    ].float()
    first = save_checkpoint(tmp_path / "a", cfg, tensors.items(), max_shard_bytes=100_000)
    with open_checkpoint(first) as r:
        second = save_checkpoint(
            tmp_path / "b", r.config, ((n, r.get(n)) for n in r.names()), max_shard_bytes=max_shard_bytes
        )
    with open_checkpoint(second) as r2:
        assert r2.config == cfg
        assert sorted(r2.names()) == sorted(tensors)
        for n, t in tensors.items():
            got = r2.get(n)
            assert got.dtype == t.dtype and torch.equal(_bits(got), _bits(t)), n
    assert json.loads((second / "generation_config.json").read_text())["eos_token_id"] == 2


def test_views_and_fp8_round_trip(tmp_path):
    fused = torch.randn(4, 6, 8).to(torch.bfloat16)
    fp8 = torch.randn(8, 8).to(torch.float8_e4m3fn)
    with ShardedWriter(tmp_path, max_shard_bytes=10**6) as w:
        for e in range(4):
            w.add(f"experts.{e}", fused[e])  # views into one storage
        w.add("fp8", fp8)
        w.add("t", fused[0].t())  # non-contiguous
    from safetensors.torch import load_file

    loaded = load_file(str(tmp_path / "model-00001-of-00001.safetensors"))
    for e in range(4):
        assert torch.equal(loaded[f"experts.{e}"], fused[e])
    assert torch.equal(_bits(loaded["fp8"]), _bits(fp8))
    assert torch.equal(loaded["t"], fused[0].t())


def test_duplicate_and_empty(tmp_path):
    w = ShardedWriter(tmp_path / "x")
    w.add("a", torch.zeros(2))
    with pytest.raises(CheckpointError, match="added twice"):
        w.add("a", torch.zeros(2))
    with pytest.raises(CheckpointError, match="no tensors"):
        ShardedWriter(tmp_path / "y").close()


def test_save_is_atomic_on_error(tmp_path):
    cfg = small_config()
    tensors = random_state(cfg)
    out = save_checkpoint(tmp_path / "out", cfg, tensors.items())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing():
        for i, item in enumerate(tensors.items()):
            if i == 10:
                raise RuntimeError("disk on fire")
            yield item

    with pytest.raises(RuntimeError, match="disk on fire"):
        save_checkpoint(out, cfg, failing(), max_shard_bytes=1000)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # temp dir removed
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path / "new", cfg, failing())
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_replaces_checkpoint_but_not_other_dirs(tmp_path):
    cfg = small_config()
    tensors = random_state(cfg)
    out = save_checkpoint(tmp_path / "out", cfg, tensors.items())
    tensors2 = random_state(cfg, seed=5)
    save_checkpoint(out, cfg, tensors2.items())
    with open_checkpoint(out) as r:
        assert torch.equal(r.get("lm_head.weight"), tensors2["lm_head.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "home", cfg, tensors.items())
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"


def test_save_copies_tokenizer_and_extra_files(tmp_path, tiny_dir):
    cfg = small_config()
    out = save_checkpoint(
        tmp_path / "o",
        cfg,
        random_state(cfg).items(),
        tokenizer_dir=tiny_dir,
        extra_files={"hf_quant_config.json": "{}"},
    )
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "hf_quant_config.json"):
        assert (out / f).is_file(), f
    assert (out / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 11] and gen["bos_token_id"] == 1  # </s> and <|im_end|>
    with pytest.raises(CheckpointError, match="holds none of"):
        save_checkpoint(tmp_path / "p", cfg, random_state(cfg).items(), tokenizer_dir=tmp_path / "o" / "..")


def test_save_progress_bar(tmp_path, capsys):
    cfg = small_config()
    tensors = random_state(cfg)
    total = sum(t.nbytes for t in tensors.values())
    save_checkpoint(tmp_path / "p", cfg, tensors.items(), progress=True, total_bytes=total)
    err = capsys.readouterr().err
    assert "writing p" in err and "100%" in err


def test_saved_checkpoint_is_readable_by_other_users(tmp_path):
    import os
    import stat

    import torch

    from trtllm_nemotron.checkpoint import save_checkpoint
    from trtllm_nemotron.config import preset

    old = os.umask(0o022)
    try:
        out = save_checkpoint(tmp_path / "ck", preset("tiny"), [("a", torch.zeros(4))])
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
