"""The TensorRT-LLM LLM-API options (`trtllm/llm_api.yaml`) for a GPU target.

TensorRT-LLM serves Nemotron-H through its PyTorch backend from a HF checkpoint plus a YAML of
`TorchLlmArgs` keys (`trtllm-serve --config`, or the Triton `llmapi` model's `model.yaml`; spec §2.5).
What we write follows NVIDIA's Super recipes (spec §2.5, §6.1):

    tensor_parallel_size / moe_expert_parallel_size   G GPUs (TP = EP = G)
    kv_cache_config      enable_block_reuse: false (forced for Mamba models by `get_model_defaults`; true only
                         where the installed TensorRT-LLM supports hybrid reuse: `hybrid_block_reuse`),
                         free_gpu_memory_fraction (0.8, the recipes' value), mamba_ssm_cache_dtype
                         (+ stochastic rounding, 5 Philox rounds, when the SSM cache is fp16: the
                         Blackwell MTP recipe)
    speculative_config   {decoding_type: MTP, max_draft_len: N}  (N > 0 only)
    moe_config.backend   TRTLLM for NVFP4 experts on sm_100, CUTLASS otherwise (TRTLLM-gen MoE runs
                         only on sm_100/103 and only quantized experts)
    cuda_graph_config    {enable_padding: true, max_batch_size: min(batch, 64 with MTP / 256 without)}
    max_batch_size, max_num_tokens, max_seq_len      from the memory plan
    enable_chunked_prefill: true, trust_remote_code: true   (the recipes)

TensorRT-LLM's config classes are pydantic models with `extra="forbid"`, so an unknown key is a load
failure on the GPU host. Every key we write is checked against the field names kept in
`builder/data/trtllm_llm_args.json`, copied from `tensorrt_llm/llmapi/llm_args.py` at the commit
recorded in that file (`TRTLLM_SOURCE`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from builder.plan import Plan
from builder.targets import Target, get_target
from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.errors import BuildError
from trtllm_nemotron.fileio import atomic_write_text

_KEYS_FILE = Path(__file__).parent / "data" / "trtllm_llm_args.json"
CUDA_GRAPH_BATCH_MTP = 64  # super_v3 MTP recipe
CUDA_GRAPH_BATCH = 256  # throughput recipe


@lru_cache(maxsize=1)
def llm_args_keys() -> dict[str, Any]:
    """The TensorRT-LLM field-name table (see module docstring)."""
    return json.loads(_KEYS_FILE.read_text())


TRTLLM_SOURCE: dict[str, str] = llm_args_keys()["source"]


def _type_ok(value: Any, typ: str, allowed: list[Any] | None) -> bool:
    """Whether `value` (parsed YAML) fits the recorded pydantic annotation `typ` (grammar in the JSON)."""
    if typ.startswith("Optional[") and typ.endswith("]"):
        return value is None or _type_ok(value, typ[len("Optional[") : -1], allowed)
    if typ.startswith("List[") and typ.endswith("]"):
        return isinstance(value, list) and all(_type_ok(v, typ[len("List[") : -1], allowed) for v in value)
    if typ == "Literal":
        return allowed is None or value in allowed
    if typ == "bool":
        return isinstance(value, bool)
    if typ in ("int", "NonNegativeInt", "PositiveInt"):
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return value >= {"int": value, "NonNegativeInt": 0, "PositiveInt": 1}[typ]
    if typ == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ == "str":
        return isinstance(value, str)
    raise BuildError(f"unknown type {typ!r} in {_KEYS_FILE}; extend builder.trtllm_config._type_ok")


def _check_value(where: str, value: Any, typ: str | None, allowed: list[Any] | None) -> list[str]:
    if typ is not None and not _type_ok(value, typ, allowed):
        extra = f" of {allowed}" if allowed is not None else ""
        return [f"{where}={value!r} (expected {typ}{extra})"]
    if typ is None and allowed is not None and value not in allowed:
        return [f"{where}={value!r} (allowed: {allowed})"]
    return []


def unknown_keys(config: dict[str, Any]) -> list[str]:
    """Problems TensorRT-LLM's TorchLlmArgs would reject: unknown keys (dotted names), values of the wrong
    type (`key=value (expected T)`), and values outside an enumeration (`key=value (allowed: [...])`).

    Types and enumerations come from `builder/data/trtllm_llm_args.json` ("types", "values", per-class
    "values"), recorded from TensorRT-LLM's `llm_args.py`; keys without a recorded type are checked by
    name only.
    """
    table = llm_args_keys()
    classes, nested, types = table["classes"], table["nested"], table.get("types", {})
    problems: list[str] = []
    top = set(classes["TorchLlmArgs"]["fields"])
    for key, value in config.items():
        if key not in top:
            problems.append(key)
            continue
        cls = nested.get(key)
        if cls is None:
            problems += _check_value(
                key, value, types.get("TorchLlmArgs", {}).get(key), table["values"].get(key)
            )
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            problems.append(f"{key} (expected a mapping for {cls})")
            continue
        fields = set(classes[cls]["fields"])
        for sub, subval in value.items():
            if sub not in fields:
                problems.append(f"{key}.{sub}")
                continue
            allowed = classes[cls].get("values", {}).get(sub) or table["values"].get(f"{key}.{sub}")
            problems += _check_value(f"{key}.{sub}", subval, types.get(cls, {}).get(sub), allowed)
    return problems


def hybrid_block_reuse() -> tuple[bool, str]:
    """Does the installed TensorRT-LLM reuse KV blocks (prefix caching) for NemotronH? -> (yes, why).

    TensorRT-LLM's hybrid cache manager gained block reuse with Mamba state snapshots (NVIDIA/TensorRT-LLM PRs
    #12185, #12896 with MTP, #16598 "agentic prefix caching", 2026), but `NemotronHForCausalLM.get_model_defaults`
    still forces `kv_cache_config.enable_block_reuse: false` ("TODO: Remove ... once KV cache block reuse is
    supported for Mamba/SSM-based models", modeling_nemotron_h.py at 00620eb0). So we turn reuse on only when the
    TensorRT-LLM installed on the build host no longer forces it off for NemotronH; anywhere else it stays off.
    """
    try:
        import tensorrt_llm
        from tensorrt_llm._torch.models.modeling_nemotron_h import NemotronHForCausalLM
    except Exception as e:  # noqa: BLE001 - absent or broken: the safe answer is "no"
        return (
            False,
            f"tensorrt_llm is not importable here ({type(e).__name__}); block reuse stays off for NemotronH",
        )
    version = getattr(tensorrt_llm, "__version__", "?")
    try:
        defaults = NemotronHForCausalLM.get_model_defaults(None) or {}
    except Exception as e:  # noqa: BLE001
        return (
            False,
            f"tensorrt_llm {version}: NemotronH model defaults unreadable ({e}); block reuse stays off",
        )
    if (defaults.get("kv_cache_config") or {}).get("enable_block_reuse") is False:
        return (
            False,
            f"tensorrt_llm {version} forces enable_block_reuse=false for NemotronH (hybrid reuse unsupported)",
        )
    return (
        True,
        f"tensorrt_llm {version} reuses KV blocks for NemotronH (its model defaults no longer force it off)",
    )


def llm_api_config(
    config: NemotronHConfig,
    target: str | Target,
    *,
    recipe: str,
    mtp: int,
    plan: Plan,
    expert_format: str | None = None,
    block_reuse: bool | None = None,
    preset: str | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The LLM-API options dict for `config` on `target`, sized by `plan`.

    `expert_format` is the routed experts' weight format under `recipe` ("nvfp4" | "fp8" | None); it
    decides the MoE backend. `preset` (builder.presets: throughput, latency, balanced) overrides the
    planned options with NVIDIA's published ones; what it adapted to the target is appended to `notes`.
    The returned dict holds only known TensorRT-LLM keys with values of the recorded types (checked).
    """
    t = target if isinstance(target, Target) else get_target(target)
    if not t.is_gpu:
        raise BuildError(
            f"target {t.name!r} has no TensorRT-LLM config: only GPU targets get trtllm/llm_api.yaml"
        )
    if mtp and not config.num_nextn_predict_layers:
        raise BuildError(f"MTP {mtp} asked for, but the model has no MTP layers; use --mtp 0")
    batch = plan.batch
    kv: dict[str, Any] = {
        "enable_block_reuse": hybrid_block_reuse()[0] if block_reuse is None else block_reuse,
        "free_gpu_memory_fraction": plan.free_fraction,
        "mamba_ssm_cache_dtype": plan.ssm_dtype,
    }
    if plan.ssm_dtype == "float16":  # NVIDIA's Blackwell MTP recipe ("requires fp16 cache")
        kv.update(mamba_ssm_stochastic_rounding=True, mamba_ssm_philox_rounds=5)
    out: dict[str, Any] = {
        "trust_remote_code": True,
        "tensor_parallel_size": plan.gpus,
        "moe_expert_parallel_size": plan.gpus,
        "max_batch_size": batch,
        "max_num_tokens": plan.max_num_tokens,
        "max_seq_len": plan.max_seq_len,
        "enable_chunked_prefill": True,
        "kv_cache_config": kv,
    }
    if "E" in config.pattern:
        backend, _reason = t.moe_backend(expert_format)
        out["moe_config"] = {"backend": backend}
    out["cuda_graph_config"] = {
        "enable_padding": True,
        "max_batch_size": min(batch, CUDA_GRAPH_BATCH_MTP if mtp else CUDA_GRAPH_BATCH),
    }
    if mtp:
        out["speculative_config"] = {"decoding_type": "MTP", "max_draft_len": int(mtp)}
    if preset is not None:
        from builder.presets import apply_preset

        out, why = apply_preset(out, preset, t, expert_format=expert_format, has_moe="E" in config.pattern)
        if notes is not None:
            notes += why
    bad = unknown_keys(out)
    if bad:  # a bug here, not user input: the table or this function drifted
        raise BuildError(
            f"generated TensorRT-LLM options have unknown keys {bad}; update builder/trtllm_config.py"
        )
    return out


def write_llm_api_yaml(config: dict[str, Any], path: str | Path) -> Path:
    """Check `config`'s keys against TorchLlmArgs and write it as YAML atomically; returns the path."""
    bad = unknown_keys(config)
    if bad:
        raise BuildError(
            f"TensorRT-LLM would reject these LLM-API keys: {bad}; known keys come from "
            f"{TRTLLM_SOURCE['repo']}@{TRTLLM_SOURCE['commit'][:12]} {TRTLLM_SOURCE['path']}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# TensorRT-LLM LLM-API options (trtllm-serve --config / Triton llmapi model.yaml), written by\n"
        "# trtllm-nemotron. Keys checked against TorchLlmArgs of "
        f"{TRTLLM_SOURCE['repo']}@{TRTLLM_SOURCE['commit']}.\n"
    )
    text = header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)
    return path


def read_llm_api_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML written by `write_llm_api_yaml`."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BuildError(f"cannot read TensorRT-LLM options {path}: {e}") from e
    if not isinstance(data, dict):
        raise BuildError(f"{path} must hold a YAML mapping of TorchLlmArgs keys, got {type(data).__name__}")
    return data
