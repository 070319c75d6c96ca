"""Build targets: the machines an engine directory is built for.

A target fixes three things the rest of the builder reads from one table:
- the hardware: SM version and GPU memory (nominal decimal GB, the figure NVIDIA's deployment guide
  and the product card use: B200 192 GB, H200 141 GB, H100 80 GB; the planner budgets against it);
- the precisions the hardware runs natively. NVFP4 W4A4 GEMMs exist only on Blackwell (sm_100); on
  Hopper (sm_90) TensorRT-LLM runs NVFP4 *weights* weight-only (W4A16, `_use_w4a16_for_nvfp4_on_hopper`
  in `modeling_nemotron_h.py`, spec §0.5), so an NVFP4 checkpoint still loads there, just slower.
  FP8 W8A8 runs on both (spec §9 precision table);
- its TensorRT-LLM defaults: MoE backend (`TRTLLM` = TRTLLMGenFusedMoE, sm_100/103 only and quantized
  experts only; `CUTLASS` elsewhere, spec §2.5), KV-cache memory fraction and the Mamba SSM cache dtype
  of NVIDIA's Super recipe (fp16 + stochastic rounding on Blackwell).

The `cpu` target has no SM, no plugins and no TensorRT-LLM YAML: the engine dir it gets holds only the
checkpoint, which our embedded runtime executes anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trtllm_nemotron.errors import BuildError

GB = 10**9  # decimal gigabyte, as in GPU product names

# how a weight format runs on an SM family: format -> mode string
_MODES_SM100 = {"nvfp4": "W4A4 (native FP4 tensor cores)", "fp8": "W8A8 (FP8 tensor cores)", None: "BF16"}
_MODES_SM90 = {
    "nvfp4": "W4A16 (NVFP4 weights, weight-only: no FP4 tensor cores on sm_90)",
    "fp8": "W8A8 (FP8 tensor cores)",
    None: "BF16",
}
_MODES_CPU = {
    "nvfp4": "dequantized by the embedded runtime (no FP4 hardware)",
    "fp8": "dequantized by the embedded runtime (no FP8 hardware)",
    None: "BF16/FP32 (torch on CPU)",
}


@dataclass(frozen=True)
class Target:
    """One build target. `sm` is None for the CPU target."""

    name: str
    description: str
    sm: int | None
    memory_gb: float | None  # per GPU; None for cpu (the planner uses host RAM)
    native_formats: tuple[str, ...]  # weight formats with native tensor-core math
    default_recipe: str
    modes: dict[Any, str] = field(repr=False)
    # TensorRT-LLM LLM-API defaults for this hardware (GPU targets only)
    moe_backend_quantized: str | None = None  # used when routed experts are NVFP4
    moe_backend_default: str | None = None  # used otherwise (bf16 / per-tensor fp8 experts)
    free_gpu_memory_fraction: float = 0.8  # NVIDIA's Super recipes (spec §2.5)
    mamba_ssm_cache_dtype: str = "float32"
    gpus_per_node: int = 8

    @property
    def is_gpu(self) -> bool:
        return self.sm is not None

    @property
    def sm_name(self) -> str | None:
        """Plugin directory name, e.g. `sm_100`."""
        return f"sm_{self.sm}" if self.sm is not None else None

    @property
    def memory_bytes(self) -> int | None:
        return int(self.memory_gb * GB) if self.memory_gb is not None else None

    def weight_mode(self, fmt: str | None) -> str:
        """How a weight stored in `fmt` ("nvfp4" | "fp8" | None = bf16) executes on this target."""
        if fmt not in self.modes:
            raise BuildError(f"unknown weight format {fmt!r}; expected one of nvfp4, fp8 or None (bf16)")
        return self.modes[fmt]

    def is_native(self, fmt: str | None) -> bool:
        return fmt is None or fmt in self.native_formats

    def moe_backend(self, expert_format: str | None) -> tuple[str, str]:
        """(backend, reason) for `moe_config.backend` given the routed experts' weight format."""
        if not self.is_gpu:
            raise BuildError(f"target {self.name!r} has no GPU: no TensorRT-LLM MoE backend applies")
        if expert_format == "nvfp4" and self.moe_backend_quantized:
            return self.moe_backend_quantized, (
                f"{self.sm_name}: TRTLLMGenFusedMoE runs NVFP4 experts natively (sm_100/103 only)"
            )
        why = (
            "TRTLLM MoE backend needs sm_100/103 and NVFP4/block-scaled experts"
            if expert_format != "nvfp4"
            else f"{self.sm_name} has no TRTLLM-gen MoE kernels"
        )
        return self.moe_backend_default or "CUTLASS", f"CUTLASS: {why}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "sm": self.sm,
            "memory_gb": self.memory_gb,
            "native_formats": list(self.native_formats),
            "default_recipe": self.default_recipe,
        }


def _hopper(name: str, description: str, *, memory_gb: int) -> Target:
    """An sm_90 part: FP8 native (NVFP4 runs as W4A16), CUTLASS MoE (no TRTLLM-gen MoE kernels)."""
    return Target(
        name=name,
        description=description,
        sm=90,
        memory_gb=memory_gb,
        native_formats=("fp8",),
        default_recipe="fp8",
        modes=_MODES_SM90,
        moe_backend_default="CUTLASS",
    )


TARGETS: dict[str, Target] = {
    "b200": Target(
        name="b200",
        description="NVIDIA B200 (Blackwell, sm_100, 192 GB HBM3e)",
        sm=100,
        memory_gb=192,
        native_formats=("nvfp4", "fp8"),
        default_recipe="nvfp4-super",
        modes=_MODES_SM100,
        moe_backend_quantized="TRTLLM",
        moe_backend_default="CUTLASS",
        mamba_ssm_cache_dtype="float16",  # NVIDIA's Super MTP recipe: fp16 + stochastic rounding
    ),
    "h200": _hopper("h200", "NVIDIA H200 (Hopper, sm_90, 141 GB HBM3e)", memory_gb=141),
    "h100": _hopper("h100", "NVIDIA H100 (Hopper, sm_90, 80 GB HBM3)", memory_gb=80),
    "cpu": Target(
        name="cpu",
        description="any machine: checkpoint only, run by the embedded runtime",
        sm=None,
        memory_gb=None,
        native_formats=(),
        default_recipe="bf16",
        modes=_MODES_CPU,
    ),
}


def get_target(name: str) -> Target:
    """The target called `name` (case-insensitive)."""
    key = str(name).lower()
    if key not in TARGETS:
        raise BuildError(f"unknown target {name!r}; choose one of {sorted(TARGETS)}")
    return TARGETS[key]
