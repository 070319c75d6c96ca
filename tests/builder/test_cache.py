"""The build cache: its keys change with everything that determines a product (so never a stale hit), and a
build reuses an entry only under the same key."""

from __future__ import annotations

import shutil

import pytest
import torch

from builder import cache as bc
from builder.manifest import read_manifest
from builder.pipeline import build_engine

FAST_CALIB = {"calib_samples": 2, "calib_seq_len": 32}
FAST = dict(progress=False, **FAST_CALIB)


@pytest.fixture
def src_root(tmp_path):
    """A copy of the sources the keys hash (trtllm_nemotron/ and plugins/, source files only)."""
    root = tmp_path / "root"
    for d in ("trtllm_nemotron", "plugins"):
        shutil.copytree(bc.ROOT / d, root / d, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    return root


def _keys(root):
    return bc.quantize_key({"config.json": "abc"}, "fp8", {}, root=root), bc.plugins_key(
        100, {"d": 1}, root=root
    )


def test_a_plugin_source_change_misses_both_keys(src_root):
    q0, p0 = _keys(src_root)
    assert _keys(src_root) == (q0, p0)  # deterministic
    ref = src_root / "plugins" / "mamba_state_update" / "reference.py"
    ref.write_text(ref.read_text() + "\n# changed\n")
    q1, p1 = _keys(src_root)
    assert q1 != q0 and p1 != p0  # calibration runs the plugin ops: the quantized key must move too


def test_a_package_source_change_misses_the_quantize_key_only(src_root):
    q0, p0 = _keys(src_root)
    (src_root / "trtllm_nemotron" / "model" / "ops.py").write_text("# changed\n")
    q1, p1 = _keys(src_root)
    assert q1 != q0 and p1 == p0


def test_moving_a_file_changes_the_key(src_root):
    """Relative paths are hashed, not file names: the same file under another folder is another source tree."""
    q0, _ = _keys(src_root)
    (src_root / "trtllm_nemotron" / "quant" / "fp8.py").rename(
        src_root / "trtllm_nemotron" / "model" / "fp8.py"
    )
    assert _keys(src_root)[0] != q0


def test_the_torch_version_and_kernel_mode_are_in_the_keys(src_root, monkeypatch):
    monkeypatch.delenv(bc.KERNELS_ENV, raising=False)
    q0, p0 = _keys(src_root)
    monkeypatch.setattr(torch, "__version__", "9.9.9+other")
    q1, p1 = _keys(src_root)
    assert q1 != q0 and p1 != p0
    monkeypatch.setenv(bc.KERNELS_ENV, "interpret")
    assert _keys(src_root)[0] != q1


def _quantize_detail(engine):
    return next(s["detail"] for s in read_manifest(engine)["stages"] if s["name"] == "quantize")


def test_a_build_hits_only_under_the_same_key(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("TRTLLM_NEMOTRON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRTLLM_NEMOTRON_NO_CACHE", raising=False)
    out = tmp_path / "engine"
    build_engine(tiny_ckpt, out, target="cpu", recipe="fp8", mtp=0, **FAST)
    assert "cached" not in _quantize_detail(out)
    assert [p.name for p in (tmp_path / "cache" / "quantized").iterdir()] == [
        bc.quantize_key(read_manifest(out)["inputs"]["files"], "fp8", FAST_CALIB)
    ]
    build_engine(tiny_ckpt, out, target="cpu", recipe="fp8", mtp=0, **FAST)
    assert "(cached)" in _quantize_detail(out)
    monkeypatch.setattr(torch, "__version__", "9.9.9+other")
    build_engine(tiny_ckpt, out, target="cpu", recipe="fp8", mtp=0, **FAST)
    assert "cached" not in _quantize_detail(out)
    assert len(list((tmp_path / "cache" / "quantized").iterdir())) == 2
