"""Recipes (module pattern -> format) and the ModelOpt JSON, checked against ModelOpt's own functions."""

from __future__ import annotations

import re

import pytest

from trtllm_nemotron.config import expected_tensors, preset
from trtllm_nemotron.errors import QuantError
from trtllm_nemotron.quant.modelopt_config import (
    hf_quant_config,
    quantization_config,
    quantized_modules,
    summarize_excluded,
)
from trtllm_nemotron.quant.recipes import RECIPES, get_recipe

CFG = preset("tiny")  # pattern MEM*EME + MTP "*E"

# module -> format per recipe (None = BF16); the table of §5.4
TABLE = {
    "backbone.layers.0.mixer.in_proj": {"fp8": "FP8", "nvfp4": "NVFP4", "nvfp4-super": "FP8", "bf16": None},
    "backbone.layers.0.mixer.out_proj": {"fp8": "FP8", "nvfp4": "NVFP4", "nvfp4-super": "FP8", "bf16": None},
    "backbone.layers.0.mixer.conv1d": {"fp8": None, "nvfp4": None, "nvfp4-super": None, "bf16": None},
    "backbone.layers.1.mixer.experts.7.up_proj": {
        "fp8": "FP8",
        "nvfp4": "NVFP4",
        "nvfp4-super": "NVFP4",
        "bf16": None,
    },
    "backbone.layers.1.mixer.experts.0.down_proj": {
        "fp8": "FP8",
        "nvfp4": "NVFP4",
        "nvfp4-super": "NVFP4",
        "bf16": None,
    },
    "backbone.layers.1.mixer.shared_experts.up_proj": {
        "fp8": "FP8",
        "nvfp4": "NVFP4",
        "nvfp4-super": "FP8",
        "bf16": None,
    },
    "backbone.layers.1.mixer.fc1_latent_proj": {
        "fp8": "FP8",
        "nvfp4": "NVFP4",
        "nvfp4-super": None,
        "bf16": None,
    },
    "backbone.layers.1.mixer.gate": {"fp8": None, "nvfp4": None, "nvfp4-super": None, "bf16": None},
    "backbone.layers.3.mixer.q_proj": {"fp8": "FP8", "nvfp4": "NVFP4", "nvfp4-super": None, "bf16": None},
    "backbone.layers.3.mixer.o_proj": {"fp8": "FP8", "nvfp4": "NVFP4", "nvfp4-super": None, "bf16": None},
    "backbone.embeddings": {"fp8": None, "nvfp4": None, "nvfp4-super": None, "bf16": None},
    "lm_head": {"fp8": None, "nvfp4": None, "nvfp4-super": None, "bf16": None},
    "mtp.layers.0.eh_proj": {"fp8": None, "nvfp4": None, "nvfp4-super": None, "bf16": None},
    "mtp.layers.1.mixer.experts.0.up_proj": {"fp8": None, "nvfp4": None, "nvfp4-super": None, "bf16": None},
}


@pytest.mark.parametrize("module", sorted(TABLE))
def test_recipe_table(module):
    for name, fmt in TABLE[module].items():
        assert get_recipe(name).format_for(module) == fmt, (name, module)
        assert get_recipe(name).format_for(module + ".weight") == fmt


def test_recipes_have_contract_fields():
    assert set(RECIPES) == {"fp8", "nvfp4", "nvfp4-super", "bf16"}
    for r in RECIPES.values():
        assert r.name and r.description and r.kv_cache in ("FP8", None)
    assert get_recipe("nvfp4-super").kv_cache == "FP8" and get_recipe("bf16").kv_cache is None
    with pytest.raises(QuantError, match="unknown recipe 'int4'.*nvfp4-super"):
        get_recipe("int4")


def test_nvfp4_super_json_matches_spec():
    q = hf_quant_config(CFG, get_recipe("nvfp4-super"))
    assert q["producer"] == {"name": "modelopt", "version": "0.47.0"}
    body = q["quantization"]
    assert body["quant_algo"] == "MIXED_PRECISION" and body["kv_cache_quant_algo"] == "FP8"
    layers = body["quantized_layers"]
    assert layers["backbone.layers.0.mixer.in_proj"] == {"quant_algo": "FP8"}
    # one key per routed expert linear, as NVIDIA's NVFP4 Super checkpoint lists them: TensorRT-LLM's
    # NemotronHMOE finds the experts' config by the prefix `model.layers.{i}.mixer.experts.` (trailing dot)
    nvfp4 = {"quant_algo": "NVFP4", "group_size": 16}
    for i in (1, 4, 6):
        for j in range(CFG.n_routed_experts):
            for proj in ("up_proj", "down_proj"):
                assert layers[f"backbone.layers.{i}.mixer.experts.{j}.{proj}"] == nvfp4
    assert "backbone.layers.1.mixer.experts" not in layers
    assert all(k.startswith("backbone.layers.1.mixer.experts.") for k in layers if "layers.1.mixer.exp" in k)
    assert layers["backbone.layers.1.mixer.shared_experts.down_proj"] == {"quant_algo": "FP8"}
    assert not any("q_proj" in k or "latent" in k or k.startswith("mtp") for k in layers)
    assert body["exclude_modules"] == ["mtp*"]  # ModelOpt's _add_mtp_exclusions with the broad `mtp` prefix
    assert not any("\x00" in k or "sentinel" in k for k in layers)  # the ModelOpt 0.47 defect (§5.6)
    cfg = quantization_config(q)
    assert cfg["quant_method"] == "modelopt" and cfg["quant_algo"] == "MIXED_PRECISION"
    assert cfg["kv_cache_scheme"] == {"dynamic": False, "num_bits": 8, "type": "float"}
    groups = {g["weights"]["num_bits"]: g for g in cfg["config_groups"].values()}
    assert groups[4]["targets"] == sorted(
        f"backbone.layers.{i}.mixer.experts.{j}.{p}"
        for i in (1, 4, 6)
        for j in range(CFG.n_routed_experts)
        for p in ("up_proj", "down_proj")
    )
    assert groups[4]["input_activations"] == {
        "dynamic": False,
        "num_bits": 4,
        "type": "float",
        "group_size": 16,
    }
    assert "backbone.layers.0.mixer.in_proj" in groups[8]["targets"]


@pytest.mark.parametrize("recipe", ["fp8", "nvfp4", "nvfp4-super"])
def test_config_json_mirror_equals_modelopt_converter(recipe):
    convert = pytest.importorskip("modelopt.torch.export.convert_hf_config").convert_hf_quant_config_format
    q = hf_quant_config(CFG, get_recipe(recipe))
    assert quantization_config(q) == convert(q)


@pytest.mark.parametrize("recipe", ["fp8", "nvfp4", "nvfp4-super"])
def test_quantization_body_equals_modelopt_layer_processing(recipe):
    """Feed ModelOpt's process_layer_quant_config the per-module formats of the HF model it would see."""
    qu = pytest.importorskip("modelopt.torch.export.quant_utils")
    rec = get_recipe(recipe)
    quantized = quantized_modules(CFG, rec)
    layer_dict: dict[str, object] = {"backbone.embeddings.quantization": None}
    for name in expected_tensors(CFG):
        if name.startswith("mtp.") or not name.endswith(".weight"):
            continue
        module = name.removesuffix(".weight")
        hf = module  # per-expert modules (NemotronH experts are a ModuleList of MLPs)
        leaf = module.rsplit(".", 1)[-1]
        if module in quantized:
            fmt = quantized[module].lower()
            layer_dict[hf + ".quantization"] = fmt
            layer_dict[hf + ".awq_block_size"] = 16 if fmt == "nvfp4" else 0
        elif leaf.endswith("_proj") or leaf in ("conv1d", "gate") or module == "lm_head":
            layer_dict.setdefault(hf + ".quantization", None)
    ref = {"quant_algo": None, "kv_cache_quant_algo": None}
    ref.update(qu.process_layer_quant_config(layer_dict))
    ref["kv_cache_quant_algo"] = "FP8"
    ref.setdefault("exclude_modules", []).append("mtp*")  # _add_mtp_exclusions for the prefix `mtp`
    assert hf_quant_config(CFG, rec)["quantization"] == ref


def test_exclude_summary_equals_modelopt():
    qu = pytest.importorskip("modelopt.torch.export.quant_utils")
    quantized = ["a.layers.0.mixer.in_proj", "a.layers.1.mixer.experts", "b.x", "a.layers.10.q"]
    unquantized = [
        "a.layers.0.mixer.conv1d",
        "a.layers.1.mixer.gate",
        "lm_head",
        "c.y.z",
        "c.w",
        "a.layers.1x.k",
        "b.xy",
        "a.emb",
    ]
    assert summarize_excluded(unquantized, quantized) == sorted(
        qu._prefix_wildcard_summarize_exclude_modules(unquantized, quantized)
    )


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_lists_experts_per_expert_and_mtp_as_modelopt(recipe):
    """Spec §5.5-5.6: NVIDIA's checkpoints name routed experts one by one and exclude MTP as `mtp*`."""
    q = hf_quant_config(CFG, get_recipe(recipe))
    if q is None:  # bf16: a plain checkpoint, no quantization JSON at all
        assert recipe == "bf16"
        return
    body = q["quantization"]
    cfg = quantization_config(q)
    keys = list(body.get("quantized_layers", {})) + [
        t for g in cfg["config_groups"].values() for t in g["targets"]
    ]
    per_expert = re.compile(r"^backbone\.layers\.\d+\.mixer\.experts\.\d+\.(up|down)_proj$")
    for k in keys:
        assert not k.endswith(".experts"), k  # the coarse key TensorRT-LLM's prefix lookup never matches
        if ".experts." in k:
            assert per_expert.match(k), k
    assert body["exclude_modules"][-1] == "mtp*" and not any(
        e.startswith("mtp.") for e in body["exclude_modules"]
    )
    # TensorRT-LLM (modeling_nemotron_h.py at 00620eb0): keys renamed `backbone` -> `model`, then each MoE
    # layer's experts take the first key starting with `model.layers.{i}.mixer.experts.`
    renamed = {
        re.sub(r"(model\.layers\.)?backbone", "model", k): v
        for k, v in body.get("quantized_layers", {}).items()
    }
    for i, kind in enumerate(CFG.pattern):
        if kind == "E" and body["quant_algo"] == "MIXED_PRECISION":
            hits = [v for k, v in renamed.items() if k.startswith(f"model.layers.{i}.mixer.experts.")]
            assert hits and all(v == {"quant_algo": "NVFP4", "group_size": 16} for v in hits)
