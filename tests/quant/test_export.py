"""quantize -> ModelOpt HF layout (§5.5/§5.6) -> load -> logits; failure modes leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.quant.conftest import CALIB, small_config
from trtllm_nemotron.checkpoint import check_checkpoint, open_checkpoint
from trtllm_nemotron.checkpoint.writer import save_checkpoint
from trtllm_nemotron.config import expected_tensors
from trtllm_nemotron.errors import CheckpointError, QuantError
from trtllm_nemotron.quant import quantize_checkpoint
from trtllm_nemotron.quant.accuracy import compare_models

SHORT_TEXT = "def add(a, b):\n    return a + b\nThe cat sat on the mat and looked at the rain."
# documented KL bounds: mean KL(P_src || P_quant) per position, tiny random model, activation + KV simulation;
# measured about 7e-5 (fp8), 1e-3 (nvfp4), 7e-5 (nvfp4-super), 0 (bf16)
KL_BOUND = {"fp8": 5e-4, "nvfp4": 5e-3, "nvfp4-super": 5e-4, "bf16": 0.0}


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_nvfp4_super_export_layout(tiny_src, quantized):
    out = quantized("nvfp4-super")
    cfg = small_config()
    files = sorted(p.name for p in out.iterdir())
    assert {"config.json", "hf_quant_config.json", "model.safetensors.index.json", "tokenizer.json"} <= set(
        files
    )
    with open_checkpoint(out) as r, open_checkpoint(tiny_src) as src:
        check_checkpoint(r)  # the validator's expectations for quantized checkpoints hold
        got = {n: (r.st_dtype(n), list(r.shape(n))) for n in r.names()}
        L, F, S, D = cfg.expert_dim, cfg.moe_intermediate_size, cfg.shared_expert_size, cfg.hidden_size
        e = "backbone.layers.1.mixer.experts.3"
        assert got[f"{e}.up_proj.weight"] == ("U8", [F, L // 2])
        assert got[f"{e}.up_proj.weight_scale"] == ("F8_E4M3", [F, L // 16])
        assert got[f"{e}.up_proj.weight_scale_2"] == ("F32", [])
        assert got[f"{e}.up_proj.input_scale"] == ("F32", [])
        assert got[f"{e}.down_proj.weight"] == ("U8", [L, F // 2])
        assert got[f"{e}.down_proj.weight_scale"] == ("F8_E4M3", [L, F // 16])
        sh = "backbone.layers.1.mixer.shared_experts"
        assert got[f"{sh}.up_proj.weight"] == ("F8_E4M3", [S, D])
        assert got[f"{sh}.down_proj.weight_scale"] == ("F32", [])
        assert got[f"{sh}.down_proj.input_scale"] == ("F32", [])
        assert got["backbone.layers.0.mixer.in_proj.weight"] == ("F8_E4M3", [cfg.d_in_proj, D])
        assert got["backbone.layers.0.mixer.out_proj.weight_scale"] == ("F32", [])
        assert got["backbone.layers.0.mixer.conv1d.weight"] == ("BF16", [cfg.conv_dim, 1, cfg.conv_kernel])
        assert got["backbone.layers.3.mixer.k_proj.k_scale"] == ("F32", [])
        assert got["backbone.layers.3.mixer.v_proj.v_scale"] == ("F32", [])
        for n in (
            "backbone.layers.3.mixer.q_proj.weight",
            "backbone.layers.1.mixer.fc1_latent_proj.weight",
            "backbone.layers.1.mixer.gate.weight",
            "lm_head.weight",
            "backbone.embeddings.weight",
            "mtp.layers.1.mixer.experts.0.up_proj.weight",
            "mtp.layers.0.eh_proj.weight",
        ):
            assert got[n][0] == "BF16", n
            assert torch.equal(r.get(n), src.get(n)), n  # unquantized tensors are copied bit-exactly
        assert not any(n.startswith("mtp.") and "scale" in n for n in got)
        assert not any("\x00" in n or "sentinel" in n for n in got)
        # numerics (§5.5): weight_scale_2 * 6 * 448 == max|W|, block scale of the amax block == 448
        w = src.get(f"{e}.up_proj.weight").float()
        s2 = r.get(f"{e}.up_proj.weight_scale_2")
        assert float(s2) * 6 * 448 == pytest.approx(float(w.abs().max()), rel=1e-6)
        assert float(r.get(f"{e}.up_proj.weight_scale").float().max()) == 448.0
        w8 = src.get(f"{sh}.up_proj.weight").float()
        assert float(r.get(f"{sh}.up_proj.weight_scale")) * 448 == pytest.approx(
            float(w8.abs().max()), rel=1e-6
        )
        assert all(float(r.get(n)) > 0 for n in got if n.endswith(("input_scale", "k_scale", "v_scale")))
    hfq = json.loads((out / "hf_quant_config.json").read_text())
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert hfq["quantization"]["quant_algo"] == "MIXED_PRECISION" and qc["quant_method"] == "modelopt"
    assert hfq["quantization"]["quantized_layers"] == qc["quantized_layers"]
    assert "backbone.layers.1.mixer.experts.0.up_proj" in hfq["quantization"]["quantized_layers"]
    assert "backbone.layers.1.mixer.experts" not in hfq["quantization"]["quantized_layers"]
    assert "\\u0000" not in (out / "config.json").read_text() + (out / "hf_quant_config.json").read_text()
    assert hfq["quantization"]["exclude_modules"] == ["mtp*"] == qc["ignore"]


@pytest.mark.parametrize("recipe", ["fp8", "nvfp4", "nvfp4-super", "bf16"])
def test_quantize_load_logits_within_kl_bound(recipe, tiny_src, quantized):
    from trtllm_nemotron import load_model
    from trtllm_nemotron.quant.calib import tokenize
    from trtllm_nemotron.quant.loading import load_model_as_deployed

    out = quantized(recipe)
    ref = load_model(tiny_src, dtype=torch.float32, progress=False)
    test = load_model_as_deployed(out, dtype=torch.float32, progress=False)
    ids = torch.tensor([tokenize(SHORT_TEXT, tiny_src, ref.config.vocab_size)[:32]])
    rep = compare_models(ref, test, [ids])
    assert rep["kl_mean"] <= KL_BOUND[recipe], rep
    if recipe == "bf16":
        assert rep["top1_agreement"] == 1.0
        assert not (out / "hf_quant_config.json").exists()
    else:
        assert rep["kl_mean"] > 0  # the simulation is really on
        plain = load_model(
            out, dtype=torch.float32, progress=False
        )  # weights only (no activation simulation)
        assert compare_models(ref, plain, [ids])["kl_mean"] <= rep["kl_mean"] + 1e-6


def test_accuracy_report_written(tiny_src, quantized):
    from trtllm_nemotron.quant.accuracy import accuracy_report

    out = quantized("fp8")
    rep = accuracy_report(out, tiny_src, texts=[SHORT_TEXT])
    assert {"kl_mean", "kl_max", "top1_agreement", "ppl_source", "ppl_quant", "ppl_delta"} <= set(rep)
    assert rep["ppl_delta"] == pytest.approx(rep["ppl_quant"] - rep["ppl_source"])
    assert 0 <= rep["kl_mean"] <= rep["kl_max"] and 0 <= rep["top1_agreement"] <= 1
    assert json.loads((out / "accuracy.json").read_text())["kl_mean"] == rep["kl_mean"]


def test_nvfp4_dimension_not_multiple_of_16(tmp_path):
    from trtllm_nemotron.checkpoint.tiny import random_tensors

    cfg = small_config().replace(moe_intermediate_size=24)  # experts' down_proj input = 24
    src = save_checkpoint(tmp_path / "src", cfg, random_tensors(cfg))
    with pytest.raises(QuantError, match=r"multiple of 16.*down_proj \[32, 24\]"):
        quantize_checkpoint(src, tmp_path / "out", recipe="nvfp4", progress=False, accuracy=False, **CALIB)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)
    # FP8 has no block constraint
    quantize_checkpoint(src, tmp_path / "out8", recipe="fp8", progress=False, accuracy=False, **CALIB)
    assert (tmp_path / "out8" / "hf_quant_config.json").is_file()


def test_unknown_recipe_and_quantized_source(tmp_path, tiny_src, quantized):
    with pytest.raises(QuantError, match="unknown recipe 'int8'"):
        quantize_checkpoint(tiny_src, tmp_path / "o", recipe="int8", progress=False)
    with pytest.raises(QuantError, match="already quantized"):
        quantize_checkpoint(quantized("fp8"), tmp_path / "o", recipe="fp8", progress=False)
    assert not (tmp_path / "o").exists()


def test_missing_source_tensors(tmp_path):
    from trtllm_nemotron.checkpoint.tiny import random_tensors

    cfg = small_config()
    gone = {"backbone.layers.1.mixer.experts.2.up_proj.weight", "backbone.layers.3.mixer.k_proj.weight"}
    src = save_checkpoint(tmp_path / "src", cfg, ((n, t) for n, t in random_tensors(cfg) if n not in gone))
    with pytest.raises(CheckpointError, match="2 missing") as ei:
        quantize_checkpoint(src, tmp_path / "out", recipe="nvfp4-super", progress=False, **CALIB)
    assert all(n in str(ei.value) for n in gone)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_read_only_output_and_full_disk(tmp_path, tiny_src, monkeypatch):
    if os.geteuid() == 0:  # root ignores permission bits: /proc is read-only for everyone
        ro_out = "/proc/trtllm_nemotron_quant_out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        ro_out = str(ro / "out")
    with pytest.raises(QuantError, match="could not write .* writable"):
        quantize_checkpoint(tiny_src, ro_out, recipe="fp8", progress=False, accuracy=False, **CALIB)
    assert not os.path.exists(ro_out)

    import safetensors.torch

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(QuantError, match="No space left"):
        quantize_checkpoint(
            tiny_src, tmp_path / "full", recipe="fp8", progress=False, accuracy=False, **CALIB
        )
    assert not (tmp_path / "full").exists() and not _leftovers(tmp_path)


def test_interrupt_leaves_nothing_and_keeps_previous_output(tmp_path, tiny_src, quantized, monkeypatch):
    from trtllm_nemotron.quant import nvfp4

    out = tmp_path / "out"
    shutil.copytree(quantized("fp8"), out)
    before = sorted(p.name for p in out.iterdir())
    calls = {"n": 0}
    real = nvfp4.quantize

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(nvfp4, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantize_checkpoint(tiny_src, out, recipe="nvfp4", progress=False, accuracy=False, **CALIB)
    assert sorted(p.name for p in out.iterdir()) == before  # the previous checkpoint is untouched
    assert json.loads((out / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] == "FP8"
    assert not _leftovers(tmp_path)


def test_fp8_and_nvfp4_single_format_json(quantized):
    for recipe, algo in (("fp8", "FP8"), ("nvfp4", "NVFP4")):
        q = json.loads((quantized(recipe) / "hf_quant_config.json").read_text())["quantization"]
        assert q["quant_algo"] == algo and q["kv_cache_quant_algo"] == "FP8"
        assert ("group_size" in q) == (algo == "NVFP4")
        ex = q["exclude_modules"]
        assert "lm_head" in ex and "backbone.embeddings" in ex and "backbone.layers.1.mixer.gate" in ex
        assert "backbone.layers.0.mixer.conv1d" in ex and ex[-1] == "mtp*"
    names = set(expected_tensors(small_config()))
    with open_checkpoint(quantized("nvfp4")) as r:
        assert r.st_dtype("backbone.layers.3.mixer.q_proj.weight") == "U8"
        assert {n for n in r.names() if "scale" not in n} == names


@pytest.mark.parametrize("recipe", ["nvfp4-super", "fp8"])
def test_streamed_accuracy_equals_the_whole_model_comparison(tiny_src, quantized, recipe):
    """The report streams both models layer by layer (bounded memory); it computes what whole models do."""
    from trtllm_nemotron import load_model
    from trtllm_nemotron.checkpoint import open_checkpoint
    from trtllm_nemotron.quant.accuracy import _windows, compare_logits, streamed_logits
    from trtllm_nemotron.quant.loading import load_model_as_deployed

    out = quantized(recipe)
    ref = load_model(tiny_src, dtype=torch.float32, progress=False)
    test = load_model_as_deployed(out, dtype=torch.float32, progress=False)
    windows = _windows([SHORT_TEXT, SHORT_TEXT[:40]], tiny_src, ref.config.vocab_size, 64)
    with open_checkpoint(tiny_src) as s, open_checkpoint(out) as q:
        ref_l, test_l = streamed_logits(s, q, windows)
    with torch.no_grad():
        for ids, r, t in zip(windows, ref_l, test_l, strict=True):
            torch.testing.assert_close(r, ref(ids)[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(t, test(ids)[0], rtol=0, atol=1e-5)
    whole = compare_models(ref, test, windows)
    assert compare_logits(ref_l, test_l, windows) == pytest.approx(whole, rel=1e-6, abs=1e-9)
