"""Validation: every kind of problem is reported (all at once), and `inspect` exits non-zero on each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.checkpoint.conftest import random_state, small_config, write_checkpoint
from trtllm_nemotron.checkpoint import check_checkpoint, open_checkpoint, validate
from trtllm_nemotron.checkpoint.validate import quant_info
from trtllm_nemotron.cli import main
from trtllm_nemotron.errors import CheckpointError, ConfigError


def _inspect(path: Path, *args: str):
    return CliRunner().invoke(main, ["inspect", str(path), *args])


def _broken(tmp_path, edit) -> Path:
    cfg = small_config()
    tensors = random_state(cfg)
    edit(tensors)
    return write_checkpoint(tmp_path / "c", cfg, tensors, shards=2)


def test_valid_checkpoint_has_no_problems(small_ckpt):
    path, _, _ = small_ckpt
    with open_checkpoint(path) as r:
        assert validate(r) == []
        check_checkpoint(r)
    res = _inspect(path)
    assert res.exit_code == 0, res.output
    assert "problems       none" in res.output


CASES = {
    "missing": (
        lambda t: t.pop("backbone.layers.2.mixer.dt_bias"),
        r"missing tensor backbone\.layers\.2\.mixer\.dt_bias \(expected bfloat16/float16/float32 \[8\]\)",
    ),
    "shape": (
        lambda t: t.__setitem__(
            "backbone.layers.3.mixer.k_proj.weight", torch.zeros(16, 64, dtype=torch.bfloat16)
        ),
        r"backbone\.layers\.3\.mixer\.k_proj\.weight: shape \[16, 64\], expected \[32, 64\]",
    ),
    "unexpected": (
        lambda t: t.__setitem__("backbone.layers.0.mixer.extra.weight", torch.zeros(3)),
        r"unexpected tensor backbone\.layers\.0\.mixer\.extra\.weight \[3\]",
    ),
    "dtype": (
        lambda t: t.__setitem__("backbone.norm_f.weight", torch.ones(64, dtype=torch.int32)),
        r"backbone\.norm_f\.weight: dtype int32, expected bfloat16/float16/float32",
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_problem_is_reported_and_inspect_fails(tmp_path, kind):
    edit, pattern = CASES[kind]
    path = _broken(tmp_path, edit)
    with open_checkpoint(path) as r:
        problems = validate(r)
        assert [p.kind for p in problems] == [kind]
        with pytest.raises(CheckpointError, match=pattern):
            check_checkpoint(r)
    res = _inspect(path)
    assert res.exit_code == 1
    assert "problems       1" in res.output
    js = _inspect(path, "--json")
    assert js.exit_code == 1
    report = json.loads(js.stdout)
    assert len(report["problems"]) == 1


def test_all_problems_in_one_error_truncated(tmp_path):
    def edit(t):
        for e in range(4):
            for layer in (1, 4, 6):
                t.pop(f"backbone.layers.{layer}.mixer.experts.{e}.up_proj.weight")
        t["lm_head.weight"] = t["lm_head.weight"][:, :32].contiguous()
        t["junk"] = torch.zeros(1)

    path = _broken(tmp_path, edit)
    with open_checkpoint(path) as r:
        with pytest.raises(CheckpointError) as e:
            check_checkpoint(r)
    msg = str(e.value)
    assert "has 14 problem(s)" in msg
    assert "12 missing:" in msg and "... and 4 more" in msg
    assert "1 wrong shape:" in msg and "1 unexpected:" in msg
    assert msg.count("fix:") == 3


@pytest.mark.parametrize("damage", ["index", "config", "model_type", "truncated"])
def test_unreadable_checkpoints_are_clear_errors(small_ckpt, damage):
    path, _, _ = small_ckpt
    if damage == "index":
        (path / "model.safetensors.index.json").write_text("{not json")
        pattern, exc = "not a valid safetensors index", CheckpointError
    elif damage == "config":
        (path / "config.json").write_text('{"model_type": "nemotron_h",')
        pattern, exc = "config.json is not valid JSON", ConfigError
    elif damage == "model_type":
        raw = json.loads((path / "config.json").read_text())
        raw["model_type"] = "llama"
        (path / "config.json").write_text(json.dumps(raw))
        pattern, exc = "unsupported model_type 'llama'", ConfigError
    else:
        shard = path / "model-00001-of-00003.safetensors"
        shard.write_bytes(shard.read_bytes()[:-10])
        pattern, exc = "truncated or corrupt", CheckpointError
    with pytest.raises(exc, match=pattern):
        open_checkpoint(path)
    res = _inspect(path)
    assert res.exit_code == 1
    assert "Error:" in res.output and pattern.split("'")[0] in res.output
    js = _inspect(path, "--json")
    assert js.exit_code == 1
    assert pattern.split("'")[0] in json.loads(js.stdout)["error"]


def test_lone_config_with_bad_json(tmp_path):
    (tmp_path / "config.json").write_text("[")
    res = _inspect(tmp_path / "config.json")
    assert res.exit_code == 1 and "not valid JSON" in res.output


# ---- quantized checkpoints (ModelOpt layout, deployment.md §5.5–5.6) ----


def _quantize(tensors: dict[str, torch.Tensor], module_algo) -> dict[str, torch.Tensor]:
    """Replace each linear weight by ModelOpt's stored form (random bytes: only names/shapes/dtypes matter)."""
    out = {}
    for name, t in tensors.items():
        algo = module_algo(name.removesuffix(".weight")) if name.endswith("_proj.weight") else None
        if algo is None:
            out[name] = t
            continue
        m, (rows, cols) = name.removesuffix(".weight"), t.shape
        if algo == "NVFP4":
            out[name] = torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8)
            out[f"{m}.weight_scale"] = torch.rand(rows, cols // 16).to(torch.float8_e4m3fn)
            out[f"{m}.weight_scale_2"] = torch.tensor(0.01)
        else:
            out[name] = t.float().to(torch.float8_e4m3fn)
            out[f"{m}.weight_scale"] = torch.tensor(0.02)
        out[f"{m}.input_scale"] = torch.tensor(0.5)
    return out


def _mixed_algo(module: str) -> str | None:
    if module.startswith("mtp."):
        return None
    if ".experts." in module:
        return "NVFP4"
    if module.endswith(("in_proj", "out_proj", "shared_experts.up_proj", "shared_experts.down_proj")):
        return "FP8"
    return None


def _mixed_quant_config(cfg) -> dict:
    layers = {}
    for i, ch in enumerate(cfg.pattern):
        p = f"backbone.layers.{i}.mixer."
        if ch == "M":
            layers[p + "in_proj"] = {"quant_algo": "FP8"}
            layers[p + "out_proj"] = {"quant_algo": "FP8"}
        elif ch == "E":
            # the ModelOpt 0.47 sentinel defect must be tolerated
            layers[p + "experts.\x00backbone.pt_name_sentinel"] = {"quant_algo": "NVFP4", "group_size": 16}
            layers[p + "shared_experts.up_proj"] = {"quant_algo": "FP8"}
            layers[p + "shared_experts.down_proj"] = {"quant_algo": "FP8"}
    return {
        "producer": {"name": "modelopt", "version": "0.47.0"},
        "quantization": {
            "quant_algo": "MIXED_PRECISION",
            "kv_cache_quant_algo": "FP8",
            "quantized_layers": layers,
        },
    }


def _write_mixed(tmp_path, edit=None) -> Path:
    cfg = small_config()
    tensors = _quantize(random_state(cfg), _mixed_algo)
    tensors["backbone.layers.3.mixer.k_proj.k_scale"] = torch.tensor(1.0)
    tensors["backbone.layers.3.mixer.v_proj.v_scale"] = torch.tensor(1.0)
    if edit:
        edit(tensors)
    path = write_checkpoint(tmp_path / "q", cfg, tensors, shards=2)
    (path / "hf_quant_config.json").write_text(json.dumps(_mixed_quant_config(cfg)))
    return path


def test_mixed_precision_checkpoint_validates(tmp_path):
    path = _write_mixed(tmp_path)
    with open_checkpoint(path) as r:
        assert validate(r) == []
    res = _inspect(path, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["quantization"]["quant_algo"] == "MIXED_PRECISION"
    assert report["quantization"]["kv_cache_quant_algo"] == "FP8"
    # 3 E layers x 4 experts x 2 NVFP4; 3 M x 2 + 3 E x 2 FP8
    assert report["quantization"]["quantized_linears"] == {"FP8": 12, "NVFP4": 24}
    assert report["dtypes"]["uint8"] == 24 and report["dtypes"]["float8_e4m3fn"] == 3 * 4 * 2 + 12
    # logical parameter count from the files equals the config's (packed fp4 counts twice, scales not at all)
    assert report["parameters"]["files_total"] == report["parameters"]["total"]


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (
            lambda t: t.pop("backbone.layers.1.mixer.experts.2.down_proj.weight_scale_2"),
            r"missing tensor backbone\.layers\.1\.mixer\.experts\.2\.down_proj\.weight_scale_2 \(expected float32 \[\]\)",
        ),
        (
            lambda t: t.pop("backbone.layers.3.mixer.v_proj.v_scale"),
            r"missing tensor backbone\.layers\.3\.mixer\.v_proj\.v_scale",
        ),
        (
            lambda t: t.__setitem__(
                "backbone.layers.0.mixer.in_proj.weight",
                torch.zeros(1, dtype=torch.bfloat16).expand(296, 64).clone(),
            ),
            r"backbone\.layers\.0\.mixer\.in_proj\.weight: dtype bfloat16, expected float8_e4m3fn",
        ),
        (
            lambda t: t.__setitem__(
                "backbone.layers.4.mixer.experts.0.up_proj.weight_scale",
                torch.zeros(32, 4, dtype=torch.float32),
            ),
            r"(?s)experts\.0\.up_proj\.weight_scale: shape \[32, 4\], expected \[32, 2\].*\n.*dtype float32, expected float8_e4m3fn",
        ),
    ],
)
def test_quantized_problems(tmp_path, edit, pattern):
    path = _write_mixed(tmp_path, edit)
    with open_checkpoint(path) as r:
        with pytest.raises(CheckpointError, match=pattern):
            check_checkpoint(r)
    assert _inspect(path).exit_code == 1


def test_single_format_nvfp4_with_excludes(tmp_path):
    cfg = small_config()
    q = {
        "quantization": {
            "quant_algo": "NVFP4",
            "group_size": 16,
            "exclude_modules": ["lm_head", "*.mixer.q_proj"],
        }
    }
    info = quant_info(q)

    def algo(m):
        return info.module_algo(m)

    assert algo("backbone.layers.3.mixer.q_proj") is None and algo("lm_head") is None
    assert algo("backbone.layers.3.mixer.k_proj") == "NVFP4" and algo("mtp.layers.0.mixer.k_proj") is None
    tensors = _quantize(random_state(cfg), algo)
    path = write_checkpoint(tmp_path / "n", cfg, tensors)
    raw = cfg.to_dict()
    raw["quantization_config"] = {  # config.json mirror only (no hf_quant_config.json)
        "quant_algo": "NVFP4",
        "ignore": ["lm_head", "*.mixer.q_proj"],
        "quant_method": "modelopt",
    }
    (path / "config.json").write_text(json.dumps(raw))
    with open_checkpoint(path) as r:
        assert validate(r) == []
