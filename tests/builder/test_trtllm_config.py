"""TensorRT-LLM LLM-API YAML: NVIDIA's Super recipe keys, known-key check, YAML round trip, targets."""

from __future__ import annotations

import pytest
import yaml

from builder.plan import plan_for_build
from builder.targets import TARGETS, get_target
from builder.trtllm_config import (
    TRTLLM_SOURCE,
    llm_api_config,
    llm_args_keys,
    read_llm_api_yaml,
    unknown_keys,
    write_llm_api_yaml,
)
from trtllm_nemotron.config import preset
from trtllm_nemotron.errors import BuildError

SUPER, TINY = preset("super-120b"), preset("tiny")


def _walk_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _walk_keys(v, prefix + k + ".")
    return out


def test_key_table_records_its_source():
    assert TRTLLM_SOURCE["repo"] == "NVIDIA/TensorRT-LLM"
    assert len(TRTLLM_SOURCE["commit"]) == 40
    classes = llm_args_keys()["classes"]
    # fields NVIDIA's Super recipes use (spec §2.5) are all present
    for key in (
        "max_batch_size",
        "max_num_tokens",
        "tensor_parallel_size",
        "moe_expert_parallel_size",
        "enable_attention_dp",
        "cuda_graph_config",
        "kv_cache_config",
        "num_postprocess_workers",
        "speculative_config",
        "moe_config",
        "stream_interval",
        "enable_chunked_prefill",
        "trust_remote_code",
    ):
        assert key in classes["TorchLlmArgs"]["fields"], key
    for key in (
        "free_gpu_memory_fraction",
        "enable_block_reuse",
        "mamba_ssm_cache_dtype",
        "mamba_ssm_stochastic_rounding",
        "mamba_ssm_philox_rounds",
    ):
        assert key in classes["KvCacheConfig"]["fields"], key
    assert {"decoding_type", "max_draft_len", "allow_advanced_sampling"} <= set(
        classes["MTPDecodingConfig"]["fields"]
    )


def test_nvidia_super_recipe_yaml_passes_the_check():
    """The exact YAML of spec §2.5 (both documents) holds only known keys; typos are caught."""
    recipe = yaml.safe_load("""
trust_remote_code: true
kv_cache_config:
  enable_block_reuse: false
  free_gpu_memory_fraction: 0.8
  mamba_ssm_cache_dtype: float16
  mamba_ssm_stochastic_rounding: true
  mamba_ssm_philox_rounds: 5
speculative_config: {decoding_type: MTP, max_draft_len: 5, allow_advanced_sampling: true}
cuda_graph_config: {max_batch_size: 64, enable_padding: true}
moe_config: {backend: TRTLLM}
stream_interval: 10
enable_chunked_prefill: true
enable_attention_dp: true
""")
    throughput = yaml.safe_load("""
max_batch_size: 512
max_num_tokens: 2048
tensor_parallel_size: 4
moe_expert_parallel_size: 4
trust_remote_code: true
enable_attention_dp: true
cuda_graph_config: {enable_padding: true, max_batch_size: 256}
kv_cache_config: {free_gpu_memory_fraction: 0.8, enable_block_reuse: false}
num_postprocess_workers: 4
""")
    assert unknown_keys(recipe) == [] and unknown_keys(throughput) == []
    assert unknown_keys({"max_batch_sizes": 1}) == ["max_batch_sizes"]
    assert unknown_keys({"kv_cache_config": {"enable_block_resue": False}}) == [
        "kv_cache_config.enable_block_resue"
    ]
    assert unknown_keys({"moe_config": {"backend": "FASTEST"}})[0].startswith("moe_config.backend='FASTEST'")


@pytest.mark.parametrize("target,recipe,backend", [
    ("b200", "nvfp4-super", "TRTLLM"), ("b200", "bf16", "CUTLASS"), ("b200", "fp8", "CUTLASS"),
    ("h100", "nvfp4-super", "CUTLASS"), ("h200", "fp8", "CUTLASS"),
])  # fmt: skip
def test_super_config_per_target(target, recipe, backend):
    t = get_target(target)
    plan = plan_for_build(SUPER, t, recipe=recipe, mtp=3)
    expert_fmt = {"nvfp4-super": "nvfp4", "fp8": "fp8", "bf16": None}[recipe]
    cfg = llm_api_config(SUPER, t, recipe=recipe, mtp=3, plan=plan, expert_format=expert_fmt)
    assert unknown_keys(cfg) == []
    assert cfg["moe_config"] == {"backend": backend}
    assert cfg["speculative_config"] == {"decoding_type": "MTP", "max_draft_len": 3}
    kv = cfg["kv_cache_config"]
    assert kv["enable_block_reuse"] is False and kv["free_gpu_memory_fraction"] == 0.8
    assert kv["mamba_ssm_cache_dtype"] == ("float16" if target == "b200" else "float32")
    assert kv.get("mamba_ssm_stochastic_rounding", False) is (target == "b200")
    assert cfg["tensor_parallel_size"] == cfg["moe_expert_parallel_size"] == plan.gpus
    assert (cfg["max_batch_size"], cfg["max_seq_len"], cfg["max_num_tokens"]) == (
        plan.batch,
        plan.max_seq_len,
        plan.max_num_tokens,
    )
    assert cfg["cuda_graph_config"] == {"enable_padding": True, "max_batch_size": min(plan.batch, 64)}


def test_super_nvfp4_b200_is_nvidias_single_gpu_recipe():
    plan = plan_for_build(SUPER, "b200", recipe="nvfp4-super", mtp=3)
    cfg = llm_api_config(SUPER, "b200", recipe="nvfp4-super", mtp=3, plan=plan, expert_format="nvfp4")
    assert cfg["tensor_parallel_size"] == 1 and cfg["max_batch_size"] == 64 and cfg["max_seq_len"] == 131072


def test_no_mtp_and_cpu():
    plan = plan_for_build(TINY, "h100", recipe="bf16", mtp=0)
    cfg = llm_api_config(TINY, "h100", recipe="bf16", mtp=0, plan=plan, expert_format=None)
    assert "speculative_config" not in cfg and cfg["cuda_graph_config"]["max_batch_size"] == 256
    with pytest.raises(BuildError, match="only GPU targets"):
        llm_api_config(TINY, "cpu", recipe="bf16", mtp=0, plan=plan)
    with pytest.raises(BuildError, match="no MTP layers"):
        llm_api_config(preset("nano-30b"), "b200", recipe="bf16", mtp=3, plan=plan)


def test_yaml_round_trip_and_rejects_unknown(tmp_path):
    plan = plan_for_build(TINY, "b200", recipe="nvfp4-super", mtp=3)
    cfg = llm_api_config(TINY, "b200", recipe="nvfp4-super", mtp=3, plan=plan, expert_format="nvfp4")
    path = write_llm_api_yaml(cfg, tmp_path / "trtllm" / "llm_api.yaml")
    text = path.read_text()
    assert text.startswith("# TensorRT-LLM LLM-API options") and TRTLLM_SOURCE["commit"] in text
    back = read_llm_api_yaml(path)
    assert back == cfg
    assert unknown_keys(back) == [] and all(k for k in _walk_keys(back))
    with pytest.raises(BuildError, match="would reject.*kv_cache_config.bogus"):
        write_llm_api_yaml({**cfg, "kv_cache_config": {"bogus": 1}}, tmp_path / "bad.yaml")
    assert not (tmp_path / "bad.yaml").exists()
    assert [p.name for p in (tmp_path / "trtllm").iterdir()] == ["llm_api.yaml"]  # no temp files left


def test_targets_table():
    assert {n: (t.sm, t.memory_gb) for n, t in TARGETS.items()} == {
        "b200": (100, 192),
        "h200": (90, 141),
        "h100": (90, 80),
        "cpu": (None, None),
    }
    b200, h100 = get_target("B200"), get_target("h100")
    assert b200.is_native("nvfp4") and not h100.is_native("nvfp4") and h100.is_native("fp8")
    assert "W4A4" in b200.weight_mode("nvfp4") and "W4A16" in h100.weight_mode("nvfp4")
    assert b200.sm_name == "sm_100" and h100.sm_name == "sm_90" and get_target("cpu").sm_name is None
    assert b200.moe_backend("nvfp4")[0] == "TRTLLM" and b200.moe_backend(None)[0] == "CUTLASS"
    assert h100.moe_backend("nvfp4")[0] == "CUTLASS"
    with pytest.raises(BuildError, match="unknown target 'a100'"):
        get_target("a100")
    with pytest.raises(BuildError, match="no GPU"):
        get_target("cpu").moe_backend("nvfp4")
