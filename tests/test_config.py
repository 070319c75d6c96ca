"""config.py: HF config.json round trips, aliases, presets' exact parameter counts, refusals."""

from __future__ import annotations

import json
import math

import pytest

from trtllm_nemotron.config import PRESETS, NemotronHConfig, expected_tensors, preset
from trtllm_nemotron.errors import ConfigError

# Spec §3.4: HF API totals of the published checkpoints.
SUPER_TOTAL = 123_611_033_088
NANO_TOTAL = 31_577_940_288


def test_super_parameter_counts():
    c = preset("super-120b").parameter_counts()
    assert c["total"] == SUPER_TOTAL
    assert c["mtp"] == 2_942_325_248  # published MTP total
    assert c["total"] - c["mtp"] - c["active"] == 107_898_470_400  # published inactive backbone experts
    assert len(expected_tensors(preset("super-120b"))) == 42_683


def test_nano_parameter_counts():
    c = preset("nano-30b").parameter_counts()
    assert c["total"] == NANO_TOTAL
    assert c["mtp"] == 0
    assert len(expected_tensors(preset("nano-30b"))) == 6_243
    assert 3.5e9 < c["active"] < 3.65e9


def test_super_derived_dims():
    s = preset("super-120b")
    assert (s.d_inner, s.conv_dim, s.d_in_proj, s.norm_group_size, s.heads_per_group, s.expert_dim) == (
        8192,
        10240,
        18560,
        1024,
        16,
        1024,
    )
    n = preset("nano-30b")
    assert (n.d_inner, n.conv_dim, n.d_in_proj, n.expert_dim) == (4096, 6144, 10304, 2688)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trip(name, tmp_path):
    cfg = preset(name)
    cfg.to_json(tmp_path / "config.json")
    back = NemotronHConfig.from_json(tmp_path)
    assert back == cfg
    assert back.to_dict() == json.loads((tmp_path / "config.json").read_text())


def test_round_trip_is_lossless_for_legacy_and_unknown_keys():
    d = {
        "model_type": "nemotron_h",
        "architectures": ["NemotronHForCausalLM"],
        "hidden_size": 64,
        "layers_block_type": ["mamba", "moe", "attention", "mlp"],
        "mamba_n_groups": 2,
        "mamba_d_conv": 3,
        "mamba_num_heads": 4,
        "mamba_head_dim": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "attention_head_dim": 16,
        "custom_field": {"a": [1, 2]},
        "time_step_limit": [0.0, math.inf],
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
    }
    cfg = NemotronHConfig.from_dict(d)
    assert cfg.pattern == "ME*-" and cfg.n_groups == 2 and cfg.conv_kernel == 3 and cfg.head_dim == 16
    assert cfg.to_dict() == d
    changed = cfg.replace(n_groups=4).to_dict()
    assert changed["mamba_n_groups"] == 4 and "n_groups" not in changed


def test_layers_block_type_wins_and_mtp_fields():
    d = {
        "model_type": "nemotron_h",
        "hybrid_override_pattern": "MM",
        "num_nextn_predict_layers": 1,
        "layers_block_type": ["linear_attention", "moe", "full_attention"],
        "mtp_hybrid_override_pattern": "*E",
    }
    cfg = NemotronHConfig.from_dict(d)
    assert cfg.pattern == "ME*" and cfg.mtp_pattern == "*E" and cfg.num_nextn_predict_layers == 1
    names = expected_tensors(cfg)
    assert "mtp.layers.0.eh_proj.weight" in names and "mtp.layers.1.final_layernorm.weight" in names
    assert "mtp.layers.0.final_layernorm.weight" not in names


@pytest.mark.parametrize(
    "d, match",
    [
        ({"model_type": "llama"}, "unsupported model_type 'llama'"),
        ({"model_type": "nemotron_h_puzzle", "hybrid_override_pattern": "ME"}, "nemotron_h_puzzle"),
        ({"model_type": "nemotron_h"}, "neither 'hybrid_override_pattern'"),
        ({"model_type": "nemotron_h", "hybrid_override_pattern": "MXE"}, "unknown layer characters"),
        (
            {"model_type": "nemotron_h", "hybrid_override_pattern": "ME", "num_hidden_layers": 3},
            "num_hidden_layers",
        ),
        (
            {
                "model_type": "nemotron_h",
                "hybrid_override_pattern": "E",
                "n_routed_experts": 8,
                "num_experts_per_tok": 9,
            },
            "num_experts_per_tok",
        ),
        (
            {"model_type": "nemotron_h", "hybrid_override_pattern": "M", "mamba_num_heads": 6, "n_groups": 4},
            "multiple of n_groups",
        ),
        ({"model_type": "nemotron_h", "layers_block_type": ["mamba", "conv"]}, "unknown layer types"),
    ],
)
def test_refusals(d, match):
    with pytest.raises(ConfigError, match=match):
        NemotronHConfig.from_dict(d)


def test_bad_json_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        NemotronHConfig.from_json(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        NemotronHConfig.from_json(tmp_path / "missing")


def test_hf_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = preset("tiny")
    cfg.to_json(tmp_path / "config.json")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert hf.hybrid_override_pattern == cfg.pattern
    assert hf.mtp_hybrid_override_pattern == cfg.mtp_pattern
    assert (hf.n_groups, hf.moe_latent_size, hf.n_group, hf.topk_group) == (2, 32, 4, 2)


def test_reads_config_saved_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = preset("tiny")
    cfg.to_json(tmp_path / "config.json")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    hf.save_pretrained(tmp_path / "hf")
    back = NemotronHConfig.from_json(tmp_path / "hf")
    assert back.time_step_limit == (0.0, math.inf)
    assert back.replace(raw=None) == cfg.replace(raw=None, torch_dtype=back.torch_dtype)
    assert back.to_dict() == json.loads((tmp_path / "hf" / "config.json").read_text())
