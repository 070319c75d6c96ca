"""NVIDIA's published TensorRT-LLM serving configurations for Nemotron 3 Super, as data (`build --preset`).

Each preset is the set of `TorchLlmArgs` options one of NVIDIA's configs sets, copied value for value, with
the config it comes from (spec deployment.md §2.5, openai_serving.md §4):

| preset       | source                                                                  | shape                      |
|--------------|-------------------------------------------------------------------------|----------------------------|
| `throughput` | TensorRT-LLM `examples/configs/curated/nemotron-3-super-throughput.yaml` | attention DP, EP = TP,     |
|              | + deployment guide config B (8xB200 DEP8): `stream_interval: 10`        | CUDA graphs to batch 256   |
| `latency`    | deployment guide config A (2xB200 TEP2)                                 | TEP, batch 16, MTP 3       |
| `balanced`   | `examples/models/core/nemotron/README_nemotron_super_v3.md`, the MTP +  | attention DP, MTP 5,       |
|              | SSM stochastic-rounding config                                          | CUDA graphs to batch 64    |

How a preset is applied (`apply_preset`): the build's planner-sized options come first (TP = EP = GPUs,
`max_seq_len`, ...), then each option the preset sets replaces the planned one whole (a nested mapping
such as `kv_cache_config` is NVIDIA's, not merged: the SSM dtype and its stochastic rounding go
together). The build plans memory for the preset's batch and MTP length, so a preset that does not fit
the GPUs is refused like any plan. Target rules still hold on top:
- `moe_config.backend: TRTLLM` (TRTLLM-gen MoE) runs only on sm_100/103 with quantized experts; elsewhere
  the target's backend is used (`Target.moe_backend`).
- Hopper + NVFP4 experts: NVFP4 runs weight-only (W4A16) there. Where the recorded TensorRT-LLM has the
  Marlin kernels (`MoeConfig.backend` allows `MARLIN` and `Nvfp4GemmConfig.allowed_backends` allows `marlin`),
  the preset uses them as NVIDIA's `nemotron-super-marlin.yaml` does (`moe_config.backend: MARLIN`,
  `nvfp4_gemm_config.allowed_backends: [marlin]`); else CUTLASS's W4A16 fallback. Either way FP8 is the
  recommendation on H100/H200, and the build says why (`notes`).
- The SSM cache: `throughput` takes fp16 with stochastic rounding (5 Philox rounds), the documented
  throughput option of guide config B (`mamba_ssm_stochastic_rounding` "Requires fp16 cache");
  `latency` keeps float32 as config A sets; `balanced` is the README config, fp16 + stochastic rounding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from builder.targets import Target
from trtllm_nemotron.errors import BuildError

_GUIDE = "TensorRT-LLM docs/source/deployment-guide/deployment-guide-for-nemotron-3-super-on-trtllm.md"
MARLIN_SOURCE = "TensorRT-LLM nemotron-super-marlin.yaml (Hopper NVFP4, openai_serving.md §4)"
FP8_ON_HOPPER = (
    "FP8 is the recommended recipe on H100/H200: sm_90 has FP8 tensor cores but none for FP4, so an NVFP4 "
    "checkpoint runs weight-only there (W4A16: weights dequantized inside the GEMM, activations in BF16), "
    "slower per token than FP8 W8A8; NVIDIA's guide lists FP8 for Hopper. Use --recipe fp8"
)
SSM_FP16_SR = {
    "mamba_ssm_cache_dtype": "float16",
    "mamba_ssm_stochastic_rounding": True,
    "mamba_ssm_philox_rounds": 5,
}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    sources: tuple[str, ...]
    options: dict[str, Any]  # TorchLlmArgs options, verbatim from the sources
    mtp: int  # MTP draft length the preset serves with (0: none); the build plans memory for it

    def llm_options(self) -> dict[str, Any]:
        return copy.deepcopy(self.options)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="throughput",
            description="attention data-parallel, EP = TP, CUDA graphs to batch 256, 4 post-processing "
            "workers, stream every 10 tokens, fp16 SSM cache with stochastic rounding; no MTP",
            sources=(
                "TensorRT-LLM examples/configs/curated/nemotron-3-super-throughput.yaml",
                f"{_GUIDE}, config B (8xB200 DEP8): stream_interval 10, optional fp16 SSM cache + "
                "stochastic rounding (5 Philox rounds)",
            ),
            options={
                "max_batch_size": 512,
                "max_num_tokens": 2048,
                "trust_remote_code": True,
                "enable_attention_dp": True,
                "cuda_graph_config": {"enable_padding": True, "max_batch_size": 256},
                "kv_cache_config": {
                    "free_gpu_memory_fraction": 0.8,
                    "enable_block_reuse": False,
                    **SSM_FP16_SR,
                },
                "num_postprocess_workers": 4,
                "stream_interval": 10,
            },
            mtp=0,
        ),
        Preset(
            name="latency",
            description="tensor + expert parallel (TEP, no attention DP), batch 16, MTP with 3 draft tokens, "
            "TRTLLM MoE backend on Blackwell, stream every token, float32 SSM cache",
            sources=(
                f"{_GUIDE}, config A (2xB200 TEP2): YAML + serve flags --max_batch_size 16 "
                "--max_num_tokens 8192 --tp_size 2 --ep_size 2",
            ),
            options={
                "max_batch_size": 16,
                "max_num_tokens": 8192,
                "enable_attention_dp": False,
                "kv_cache_config": {
                    "enable_block_reuse": False,
                    "free_gpu_memory_fraction": 0.8,
                    "mamba_ssm_cache_dtype": "float32",
                },
                "speculative_config": {
                    "decoding_type": "MTP",
                    "num_nextn_predict_layers": 3,
                    "allow_advanced_sampling": True,
                },
                "cuda_graph_config": {"max_batch_size": 16, "enable_padding": True},
                "moe_config": {"backend": "TRTLLM"},
                "stream_interval": 1,
                "enable_chunked_prefill": True,
            },
            mtp=3,
        ),
        Preset(
            name="balanced",
            description="attention DP with MTP (5 draft tokens), CUDA graphs to batch 64, fp16 SSM cache with "
            "stochastic rounding, TRTLLM MoE backend on Blackwell, stream every 10 tokens",
            sources=(
                "TensorRT-LLM examples/models/core/nemotron/README_nemotron_super_v3.md, MTP + SSM "
                "stochastic rounding config (spec deployment.md §2.5)",
            ),
            options={
                "trust_remote_code": True,
                "kv_cache_config": {
                    "enable_block_reuse": False,
                    "free_gpu_memory_fraction": 0.8,
                    **SSM_FP16_SR,
                },
                "speculative_config": {
                    "decoding_type": "MTP",
                    "max_draft_len": 5,
                    "allow_advanced_sampling": True,
                },
                "cuda_graph_config": {"max_batch_size": 64, "enable_padding": True},
                "moe_config": {"backend": "TRTLLM"},
                "stream_interval": 10,
                "enable_chunked_prefill": True,
                "enable_attention_dp": True,
            },
            mtp=5,
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise BuildError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def marlin_available() -> bool:
    """Whether the recorded TensorRT-LLM (builder/data/trtllm_llm_args.json) has the Marlin NVFP4 kernels."""
    from builder.trtllm_config import llm_args_keys

    classes = llm_args_keys()["classes"]
    moe = classes.get("MoeConfig", {}).get("values", {}).get("backend", [])
    gemm = classes.get("Nvfp4GemmConfig", {}).get("values", {}).get("allowed_backends", [])
    return "MARLIN" in moe and "marlin" in gemm


def apply_preset(
    base: dict[str, Any], preset: str | Preset, target: Target, *, expert_format: str | None, has_moe: bool
) -> tuple[dict[str, Any], list[str]]:
    """(options, notes): the build's planned options `base` overridden by `preset`, with the target rules
    of the module docstring applied. `notes` say what was adapted to the target and why."""
    p = preset if isinstance(preset, Preset) else get_preset(preset)
    out = {**copy.deepcopy(base), **p.llm_options()}
    notes: list[str] = [f"preset {p.name}: " + "; ".join(p.sources)]
    if not has_moe:
        out.pop("moe_config", None)
        return out, notes
    want = (out.get("moe_config") or {}).get("backend")
    if target.sm == 90 and expert_format == "nvfp4":
        if marlin_available():
            out["moe_config"] = {**out.get("moe_config", {}), "backend": "MARLIN"}
            out["nvfp4_gemm_config"] = {"allowed_backends": ["marlin"]}
            notes.append(f"Hopper + NVFP4: Marlin W4A16 MoE and GEMM backends ({MARLIN_SOURCE})")
        else:
            backend, reason = target.moe_backend(expert_format)
            out["moe_config"] = {**out.get("moe_config", {}), "backend": backend}
            notes.append(f"Hopper + NVFP4: this TensorRT-LLM has no Marlin backend; {reason}")
        notes.append(FP8_ON_HOPPER)
    elif want == "TRTLLM":
        backend, reason = target.moe_backend(expert_format)
        if backend != "TRTLLM":
            out["moe_config"] = {**out.get("moe_config", {}), "backend": backend}
            notes.append(f"preset asks for the TRTLLM MoE backend; {reason}")
    return out, notes
