"""The two JSON descriptions of a ModelOpt HF checkpoint: `hf_quant_config.json` and
`config.json["quantization_config"]` (spec §5.6), built from a recipe and the config's tensor list.

Written as ModelOpt 0.47's `get_quant_config` / `process_layer_quant_config` /
`convert_hf_quant_config_format` would write them for the HF NemotronH model (its view of the network):
- one format in use -> `quant_algo` is that format (`group_size: 16` for NVFP4) and `exclude_modules` lists
  the unquantized modules that carry a (disabled) quantizer in the HF model: the embeddings, every
  non-quantized linear and Mamba conv1d, and the MoE routers; summarised with prefix wildcards (ModelOpt's
  `_prefix_wildcard_summarize_exclude_modules` rule: a wildcard may not cover any quantized module);
- more than one -> `quant_algo: MIXED_PRECISION` and `quantized_layers` {module: {quant_algo[, group_size]}}
  with one key per routed expert linear, `<layer>.mixer.experts.{j}.up_proj` / `.down_proj`, as NVIDIA's
  NVFP4 Super checkpoint lists them. TensorRT-LLM needs that form: `NemotronHMOE.__init__`
  (tensorrt_llm/_torch/models/modeling_nemotron_h.py at 00620eb0) looks the experts' quant config up by
  `key.startswith(f"model.layers.{layer_idx}.mixer.experts.")` after renaming `backbone` -> `model`, so a
  coarse `<layer>.mixer.experts` key (no trailing dot) leaves the experts unquantized and the NVFP4 weight
  load fails with a shape mismatch;
- the MTP block (not part of the HF model; NVIDIA copies it unquantized) is appended to `exclude_modules`
  as `mtp*`, the pattern ModelOpt's `_add_mtp_to_exclude_modules` writes (`MTP_EXCLUDE`).
Keys are clean module names: never the `.\\x00...name_sentinel` suffix of the ModelOpt 0.47 defect (§5.6).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trtllm_nemotron.checkpoint.formats import FP8, NVFP4, NVFP4_BLOCK
from trtllm_nemotron.config import NemotronHConfig, expected_tensors
from trtllm_nemotron.quant.recipes import Recipe, is_linear

PRODUCER = {"name": "modelopt", "version": "0.47.0"}  # the format version we reproduce
MTP_EXCLUDE = "mtp*"  # ModelOpt's exclusion of the MTP block (spec §5.4 `mtp.*` quantizers, §5.6)


def quantized_modules(cfg: NemotronHConfig, recipe: Recipe) -> dict[str, str]:
    """{linear module name: "FP8" | "NVFP4"} for every linear `recipe` quantizes in `cfg`."""
    out: dict[str, str] = {}
    for name, spec in expected_tensors(cfg).items():
        if not name.endswith(".weight") or len(spec.shape) != 2:
            continue
        module = name.removesuffix(".weight")
        fmt = recipe.format_for(module)
        if fmt is not None:
            out[module] = fmt
    return out


def _layer_entry(fmt: str) -> dict[str, Any]:
    return {"quant_algo": NVFP4, "group_size": NVFP4_BLOCK} if fmt == NVFP4 else {"quant_algo": FP8}


def _wildcard_candidates(name: str) -> Iterable[list[str]]:
    # prefix wildcards cut at a dot, shortest first: `a*`, then the pair {`a`, `a.*`}; finally the name itself
    for i, ch in enumerate(name):
        if ch == ".":
            yield [name[:i] + "*"]
            yield [name[:i], name[:i] + ".*"]
    yield [name]


def summarize_excluded(unquantized: Iterable[str], quantized: Iterable[str]) -> list[str]:
    """Cover the unquantized module names with the fewest prefix wildcards that match no quantized module."""
    blocked: set[str] = set()
    for q in quantized:
        blocked.add(q)
        blocked.update(q[:i] + "*" for i in range(len(q) + 1))
    chosen: set[str] = set()
    for name in unquantized:
        pick: list[str] = []
        for cand in _wildcard_candidates(name):
            if any(c in blocked for c in cand):
                continue
            if not all(c in chosen for c in cand):
                pick = cand
            break
        if len(pick) == 2:  # {prefix, prefix.*}: deployments only need `prefix.*`
            chosen.add(pick[1])
        else:
            chosen.update(pick)
    return sorted(chosen)


def _unquantized_hf_modules(cfg: NemotronHConfig, quantized: dict[str, str]) -> list[str]:
    names = ["backbone.embeddings"]
    for name, spec in expected_tensors(cfg).items():
        if name.startswith("mtp.") or not name.endswith(".weight"):
            continue
        module = name.removesuffix(".weight")
        leaf = module.rsplit(".", 1)[-1]
        if module in quantized:
            continue
        if (is_linear(module) and len(spec.shape) == 2) or leaf in ("conv1d", "gate"):
            names.append(module)
    return list(dict.fromkeys(names))


def hf_quant_config(cfg: NemotronHConfig, recipe: Recipe) -> dict[str, Any] | None:
    """The `hf_quant_config.json` dict, or None when nothing is quantized (plain BF16 checkpoint)."""
    quantized = quantized_modules(cfg, recipe)
    if not quantized and recipe.kv_cache is None:
        return None
    layers: dict[str, dict[str, Any]] = {}
    for module, fmt in quantized.items():
        layers[module] = _layer_entry(fmt)
    body: dict[str, Any] = {"quant_algo": None, "kv_cache_quant_algo": recipe.kv_cache}
    formats = {fmt for fmt in quantized.values()}
    if len(formats) > 1:
        body["quant_algo"] = "MIXED_PRECISION"
        body["quantized_layers"] = layers
    elif len(formats) == 1:
        body.update(_layer_entry(formats.pop()))
        body["exclude_modules"] = summarize_excluded(_unquantized_hf_modules(cfg, quantized), layers)
    if any(n.startswith("mtp.") for n in expected_tensors(cfg)):
        excl = body.setdefault("exclude_modules", [])
        if MTP_EXCLUDE not in excl:
            excl.append(MTP_EXCLUDE)
    return {"producer": dict(PRODUCER), "quantization": body}


def _group(algo: str) -> dict[str, Any]:
    bits = 4 if algo == NVFP4 else 8
    spec: dict[str, Any] = {"dynamic": False, "num_bits": bits, "type": "float"}
    if algo == NVFP4:
        spec["group_size"] = NVFP4_BLOCK
    return {"input_activations": dict(spec), "weights": dict(spec)}


def quantization_config(hf_quant: dict[str, Any]) -> dict[str, Any]:
    """`config.json["quantization_config"]`: the compressed-tensors-style mirror of `hf_quant_config.json`."""
    q = hf_quant["quantization"]
    algo = q.get("quant_algo")
    out: dict[str, Any] = {}
    if algo in (FP8, NVFP4):
        out["config_groups"] = {"group_0": {**_group(algo), "targets": ["Linear"]}}
    elif algo == "MIXED_PRECISION":
        by_cfg: dict[tuple, list[str]] = {}
        for module, entry in q["quantized_layers"].items():
            by_cfg.setdefault(tuple(sorted(entry.items())), []).append(module)
        out["config_groups"] = {
            f"group_{i}": {**_group(dict(key)["quant_algo"]), "targets": sorted(mods)}
            for i, (key, mods) in enumerate(by_cfg.items())
        }
        out["quantized_layers"] = q["quantized_layers"]
    out["ignore"] = list(q.get("exclude_modules") or [])
    if algo:
        out["quant_algo"] = algo
    if q.get("kv_cache_quant_algo") == FP8:
        out["kv_cache_scheme"] = {"dynamic": False, "num_bits": 8, "type": "float"}
    out["producer"] = hf_quant["producer"]
    out["quant_method"] = "modelopt"
    return out
