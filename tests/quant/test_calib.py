"""Calibration inputs and the layer-by-layer amax collection."""

from __future__ import annotations

import pytest
import torch

from tests.quant.conftest import small_config
from trtllm_nemotron.errors import QuantError
from trtllm_nemotron.quant.calib import (
    DEFAULT_CALIB_TEXT,
    LayerCalibrator,
    calibration_ids,
    load_calib_text,
    tokenize,
)


def test_calib_text_sources(tmp_path):
    assert load_calib_text(None) == DEFAULT_CALIB_TEXT
    f = tmp_path / "c.txt"
    f.write_text("hello world\n")
    assert load_calib_text(f) == load_calib_text(str(f)) == "hello world\n"
    assert load_calib_text("literal text") == "literal text"
    with pytest.raises(QuantError, match="does not exist"):
        load_calib_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(QuantError, match="empty"):
        load_calib_text(tmp_path / "empty.txt")


def test_calibration_ids_cycle_and_validate():
    ids = calibration_ids([1, 2, 3], samples=2, seq_len=4)
    assert ids.tolist() == [[1, 2, 3, 1], [2, 3, 1, 2]]
    with pytest.raises(QuantError, match="samples >= 1"):
        calibration_ids([1, 2], samples=0, seq_len=4)
    assert tokenize("ab", None, 50) == [97 % 50, 98 % 50]  # byte fallback without tokenizer.json


def test_layer_calibrator_matches_full_forward(tiny_src):
    """Streaming layer by layer gives the same hidden states and amaxes as hooks on the whole network."""
    from trtllm_nemotron import load_model
    from trtllm_nemotron.checkpoint import open_checkpoint

    cfg = small_config()
    ids = calibration_ids(list(range(5, 69)), samples=2, seq_len=16)
    model = load_model(tiny_src, dtype=torch.float32, progress=False)
    seen: dict[str, float] = {}
    mods = dict(model.named_modules())
    wanted = {
        "backbone.layers.0.mixer.in_proj",
        "backbone.layers.1.mixer.experts.0.up_proj",
        "backbone.layers.3.mixer.o_proj",
    }
    for name in wanted:
        mods[name].register_forward_pre_hook(
            lambda m, a, n=name: seen.__setitem__(n, max(seen.get(n, 0.0), float(a[0].abs().max())))
        )
    with torch.no_grad():
        h_ref = model.backbone.embeddings(ids)
        for layer in model.backbone.layers:
            h_ref = layer(h_ref)
    with open_checkpoint(tiny_src) as r:
        cal = LayerCalibrator(cfg, ids, lambda n: r.get(n), wanted, {"backbone.layers.3.mixer.k_proj"})
        amax: dict[str, float] = {}
        for i in range(len(cfg.pattern)):
            amax.update(cal.run_layer(i))
    torch.testing.assert_close(cal.h, h_ref)
    for n in wanted:
        assert amax[n] == pytest.approx(seen.get(n, 0.0), rel=1e-6)
    assert amax["backbone.layers.3.mixer.k_proj#out"] > 0
