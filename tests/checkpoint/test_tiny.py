"""make-tiny: a deterministic random checkpoint that validates, matches its counts and loads in transformers."""

from __future__ import annotations

import json
import re

import torch
from click.testing import CliRunner

from trtllm_nemotron.checkpoint import open_checkpoint, validate
from trtllm_nemotron.cli import main
from trtllm_nemotron.config import preset


def test_make_tiny_is_valid_and_initialised(tiny_dir):
    cfg = preset("tiny")
    with open_checkpoint(tiny_dir) as r:
        assert r.config == cfg
        assert validate(r) == []
        for name in r.names():
            want = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
            assert r.dtype(name) == want, name
        a_log = r.get("backbone.layers.0.mixer.A_log").float()
        assert (a_log >= 0).all() and (a_log <= torch.log(torch.tensor(16.0)) + 1e-2).all()
        dt = torch.nn.functional.softplus(r.get("backbone.layers.0.mixer.dt_bias").float())
        assert (dt >= cfg.time_step_min * 0.99).all() and (dt <= cfg.time_step_max * 1.01).all()
        assert torch.equal(
            r.get("backbone.layers.0.mixer.D"), torch.ones(cfg.mamba_num_heads, dtype=torch.bfloat16)
        )
        assert (r.get("backbone.norm_f.weight") == 1).all() and (
            r.get("mtp.layers.1.final_layernorm.weight") == 1
        ).all()
        conv = r.get("backbone.layers.0.mixer.conv1d.weight").float()
        assert conv.abs().max() <= 0.5 and conv.std() > 0.1  # uniform(+-1/sqrt(K)), K = 4
        w = r.get("backbone.layers.3.mixer.q_proj.weight").float()
        assert abs(w.std().item() - cfg.initializer_range) < 0.003
        bias = r.get("backbone.layers.1.mixer.gate.e_score_correction_bias")
        assert 0 < bias.abs().max() < 0.1
    gen = json.loads((tiny_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 11]


def test_make_tiny_cli_deterministic(tmp_path, tiny_dir):
    runner = CliRunner()
    res = runner.invoke(main, ["make-tiny", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    for f in sorted(p.name for p in tiny_dir.iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tiny_dir / f).read_bytes(), f
    res = runner.invoke(main, ["make-tiny", str(tmp_path / "b"), "--seed", "1"])
    assert res.exit_code == 0, res.output
    with open_checkpoint(tmp_path / "b") as b, open_checkpoint(tiny_dir) as a:
        assert not torch.equal(a.get("lm_head.weight"), b.get("lm_head.weight"))
    res = runner.invoke(main, ["make-tiny", str(tmp_path / "c"), "--preset", "super-120b"])
    assert res.exit_code == 1 and "at most" in res.output and not (tmp_path / "c").exists()


def test_inspect_json_counts_match_config(tiny_dir):
    res = CliRunner().invoke(main, ["inspect", str(tiny_dir), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    counts = preset("tiny").parameter_counts()
    assert r["parameters"]["total"] == counts["total"] == r["parameters"]["files_total"]
    assert r["parameters"]["active"] == counts["active"]
    assert r["parameters"]["mtp"] == counts["mtp"] == r["parameters"]["files_mtp"]
    assert r["problems"] == []
    assert r["tensors"] == r["expected_tensors"] == 200
    assert r["dtypes"] == {"bfloat16": 196, "float32": 4}  # 3 E layers + 1 MTP E: fp32 correction bias
    assert r["size_bytes"] == sum(p.stat().st_size for p in tiny_dir.glob("*.safetensors"))
    assert r["config"]["model_type"] == "nemotron_h"
    assert r["architecture"]["layer_counts"] == {"linear_attention": 3, "full_attention": 1, "moe": 3}
    assert r["quantization"] is None


def test_transformers_loads_make_tiny(tiny_dir):
    """HF 5.23 loads the checkpoint with no missing/unexpected keys (mtp.* is dropped by design) and same values."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(tiny_dir, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert all(k.startswith("mtp.") for k in info["unexpected_keys"])
    assert not info["mismatched_keys"] and not info["error_msgs"]
    sd = model.state_dict()
    with open_checkpoint(tiny_dir) as r:
        for name in r.names():
            if name.startswith("mtp."):
                continue
            key = name.replace("backbone.", "model.", 1)
            m = re.match(r"(.*\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$", key)
            hf = sd[f"{m[1]}.{m[3]}"][int(m[2])] if m else sd[key]  # HF v5 fuses experts in memory
            assert torch.equal(hf.float(), r.get(name).float()), name
    with torch.no_grad():
        logits = model(torch.tensor([[1, 17, 300, 42]])).logits
    assert logits.shape == (1, 4, 512) and torch.isfinite(logits).all()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = "import json\nprint(json.dumps({'a': 1}))"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.eos_token == "<|im_end|>"
