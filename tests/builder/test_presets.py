"""`build --preset`: NVIDIA's published Super configs as data, checked key/type/enum and field by field."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from builder.plan import plan_for_build
from builder.presets import FP8_ON_HOPPER, PRESETS, SSM_FP16_SR, apply_preset, get_preset, marlin_available
from builder.targets import get_target
from builder.trtllm_config import llm_api_config, read_llm_api_yaml, unknown_keys, write_llm_api_yaml
from trtllm_nemotron.config import preset as model_preset
from trtllm_nemotron.errors import BuildError

SUPER = model_preset("super-120b")

# The configs the presets cite, as NVIDIA publishes them (spec deployment.md §2.5, openai_serving.md §4).
# "GPUS" marks the tensor / expert parallel size, which follows --gpus (NVIDIA's files fix 4 or 2).
CITED = {
    # examples/configs/curated/nemotron-3-super-throughput.yaml + guide config B's stream_interval
    "throughput": """
max_batch_size: 512
max_num_tokens: 2048
tensor_parallel_size: GPUS
moe_expert_parallel_size: GPUS
trust_remote_code: true
enable_attention_dp: true
cuda_graph_config: {enable_padding: true, max_batch_size: 256}
kv_cache_config: {free_gpu_memory_fraction: 0.8, enable_block_reuse: false}
num_postprocess_workers: 4
stream_interval: 10
""",
    # deployment guide config A (2xB200 TEP2): YAML + serve flags
    "latency": """
max_batch_size: 16
max_num_tokens: 8192
tensor_parallel_size: GPUS
moe_expert_parallel_size: GPUS
kv_cache_config: {enable_block_reuse: false, free_gpu_memory_fraction: 0.8, mamba_ssm_cache_dtype: float32}
speculative_config: {decoding_type: MTP, num_nextn_predict_layers: 3, allow_advanced_sampling: true}
cuda_graph_config: {max_batch_size: 16, enable_padding: true}
moe_config: {backend: TRTLLM}
stream_interval: 1
enable_chunked_prefill: true
""",
    # README_nemotron_super_v3.md, MTP + SSM stochastic rounding
    "balanced": """
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
""",
}


# GPUs per preset in the tests as in the cited configs; the planner counts every sequence at full length, so
# NVIDIA's throughput batch of 512 is planned at 32768 tokens per sequence (131072 would not fit: refused)
GPUS = {"throughput": 4, "latency": 2, "balanced": 4}
SEQ = {"throughput": 32768}


def _build_options(
    name: str, target: str = "b200", gpus: int | None = None, recipe="nvfp4-super", fmt="nvfp4"
):
    p = get_preset(name)
    gpus = gpus or GPUS[name]
    plan = plan_for_build(
        SUPER,
        target,
        recipe=recipe,
        mtp=p.mtp,
        gpus=gpus,
        max_seq_len=SEQ.get(name),
        batch=p.options.get("max_batch_size"),
    )
    notes: list[str] = []
    cfg = llm_api_config(
        SUPER, target, recipe=recipe, mtp=p.mtp, plan=plan, expert_format=fmt, preset=name, notes=notes
    )
    return cfg, notes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_yaml_passes_the_check_and_matches_the_cited_config_field_by_field(name, tmp_path):
    cfg, notes = _build_options(name)
    assert unknown_keys(cfg) == []
    path = write_llm_api_yaml(cfg, tmp_path / "llm_api.yaml")
    got = read_llm_api_yaml(path)
    cited = yaml.safe_load(CITED[name])
    for key, want in cited.items():
        if want == "GPUS":
            want = GPUS[name]
        if isinstance(want, dict):
            for sub, v in want.items():
                assert got[key][sub] == v, f"{key}.{sub}"
            extra = set(got[key]) - set(want)
            # the one addition to a cited mapping: guide config B's documented fp16 SSM option (throughput)
            assert extra == (
                set(SSM_FP16_SR) if (name, key) == ("throughput", "kv_cache_config") else set()
            ), key
        else:
            assert got[key] == want, key
    assert got["tensor_parallel_size"] == got["moe_expert_parallel_size"] == GPUS[name]  # EP = TP
    assert notes and notes[0].startswith(f"preset {name}: ")
    assert all(s in notes[0] for s in get_preset(name).sources)


def test_each_preset_cites_its_sources_and_sets_the_issue_shape():
    t = get_preset("throughput").options
    assert t["enable_attention_dp"] and t["stream_interval"] == 10 and t["num_postprocess_workers"] == 4
    assert t["cuda_graph_config"]["max_batch_size"] == 256
    # fp16 SSM cache with stochastic rounding: the documented throughput option (guide config B)
    assert t["kv_cache_config"]["mamba_ssm_cache_dtype"] == "float16"
    assert t["kv_cache_config"]["mamba_ssm_stochastic_rounding"] is True
    lat = get_preset("latency")
    assert not lat.options["enable_attention_dp"] and lat.options["max_batch_size"] == 16 and lat.mtp == 3
    assert lat.options["speculative_config"]["decoding_type"] == "MTP"
    for p in PRESETS.values():
        assert p.sources and all("TensorRT-LLM" in s for s in p.sources)


def test_hopper_nvfp4_uses_marlin_and_recommends_fp8():
    assert marlin_available()  # the recorded TensorRT-LLM (llm_args.py at its commit) has the Marlin kernels
    for name in PRESETS:
        cfg, notes = _build_options(name, target="h200", gpus=8)
        assert cfg["moe_config"] == {"backend": "MARLIN"}
        assert cfg["nvfp4_gemm_config"] == {"allowed_backends": ["marlin"]}
        assert FP8_ON_HOPPER in notes and unknown_keys(cfg) == []
    cfg, notes = _build_options("latency", target="h200", gpus=8, recipe="fp8", fmt="fp8")
    assert cfg["moe_config"] == {"backend": "CUTLASS"} and "nvfp4_gemm_config" not in cfg
    assert any("TRTLLM MoE backend" in n for n in notes)


def test_without_marlin_hopper_falls_back_to_cutlass(monkeypatch):
    import builder.presets as presets

    monkeypatch.setattr(presets, "marlin_available", lambda: False)
    out, notes = apply_preset({}, "throughput", get_target("h100"), expert_format="nvfp4", has_moe=True)
    assert out["moe_config"] == {"backend": "CUTLASS"} and "nvfp4_gemm_config" not in out
    assert any("no Marlin" in n for n in notes) and FP8_ON_HOPPER in notes


@pytest.mark.parametrize(
    "bad,problem",
    [
        ({"stream_interval": "10"}, "stream_interval='10' (expected int)"),
        ({"enable_attention_dp": 1}, "enable_attention_dp=1 (expected bool)"),
        ({"tensor_parallel_size": True}, "tensor_parallel_size=True (expected int)"),
        ({"max_batch_size": 2.5}, "max_batch_size=2.5 (expected Optional[int])"),
        ({"kv_cache_config": {"enable_block_reuse": "no"}}, "kv_cache_config.enable_block_reuse='no'"),
        ({"kv_cache_config": {"free_gpu_memory_fraction": "0.8"}}, "free_gpu_memory_fraction='0.8'"),
        ({"kv_cache_config": {"mamba_ssm_cache_dtype": "fp16"}}, "mamba_ssm_cache_dtype='fp16'"),
        ({"moe_config": {"backend": "FAST"}}, "moe_config.backend='FAST'"),
        ({"cuda_graph_config": {"max_batch_size": -1}}, "expected NonNegativeInt"),
        ({"speculative_config": {"decoding_type": "Eagle"}}, "speculative_config.decoding_type='Eagle'"),
        ({"nvfp4_gemm_config": {"allowed_backends": ["marlin", "tensorcore"]}}, "allowed_backends"),
        ({"nvfp4_gemm_config": {"allowed_backends": "marlin"}}, "expected List[Literal]"),
    ],
)
def test_value_types_and_enums_are_checked(bad, problem):
    problems = unknown_keys(bad)
    assert len(problems) == 1 and problem in problems[0], problems
    with pytest.raises(BuildError, match="would reject"):
        write_llm_api_yaml(bad, "/nonexistent/never-written.yaml")


def test_valid_values_pass():
    ok = {
        "max_batch_size": None,
        "kv_cache_config": {"free_gpu_memory_fraction": 1},
        "cuda_graph_config": {"batch_sizes": [1, 2, 4], "max_batch_size": 0},
        "nvfp4_gemm_config": {"allowed_backends": ["cutlass", "marlin"]},
    }
    assert unknown_keys(ok) == []


def test_unknown_preset_and_cli_refuses_cpu():
    with pytest.raises(BuildError, match="unknown preset 'fast'"):
        get_preset("fast")
    from trtllm_nemotron.cli import main

    r = CliRunner().invoke(
        main, ["build", "--target", "cpu", "--preset", "latency", "--out", "/nonexistent/x"]
    )
    assert r.exit_code == 2 and "GPU --target" in r.output
    r = CliRunner().invoke(main, ["build", "--preset", "fastest"])
    assert r.exit_code == 2 and "latency" in r.output
