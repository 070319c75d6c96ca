"""Memory planner: does a model + recipe fit a target, and how many sequences at once?

Everything is computed from the config alone (no tensors are read), per GPU, in bytes:

    weights      Σ over `expected_tensors(cfg)` of the stored size under the recipe:
                   bf16 (model dtype) 2·n, fp32 tensors (A_log, D, dt_bias, router bias) 4·n,
                   fp8  n + 8            (e4m3 payload + fp32 weight_scale + fp32 input_scale),
                   nvfp4 n/2 + n/16 + 8  (packed e2m1 + e4m3 block scale per 16 + two fp32 scalars);
                 the recipe decides the format per module (`quant.recipes.get_recipe(r).format_for`);
                 an FP8 KV cache adds fp32 k_scale + v_scale per attention layer. This is exactly the
                 tensor bytes of the checkpoint `quantize_checkpoint` writes (tested).
                 With G GPUs, experts are split by EP = G and the other matrices by TP = G; norms,
                 1-D tensors, the router and the LatentMoE latent projections are replicated
                 (TensorRT-LLM does not shard `fc1/fc2_latent_proj`, spec §2.3).
    kv / token   2 (K and V) · kv_heads/TP · head_dim · sizeof(kv dtype) per attention layer
                 (the MTP block's attention layers included when MTP is on; FP8 KV = 1 byte).
    state / seq  per Mamba layer (spec Appendix B, TensorRT-LLM's MambaCacheManager):
                   conv = conv_dim/TP · (d_conv − 1) · sizeof(model dtype)
                   ssm  = nheads/TP · head_dim · d_state · sizeof(mamba_ssm_cache_dtype)
                 Super at TP=1, bf16 conv, fp32 SSM: 10240·3·2 + 128·64·128·4 = 4 255 744 B ≈ 4.26 MB.
                 MTP speculation also keeps per-draft-step copies (intermediate_ssm /
                 intermediate_conv_window, spec §6.2): (N + 1) more states per layer per sequence.
    logits       (N + 1) · vocab/TP · 4 bytes per sequence (fp32 logits of one decode step).
    onnx         the exported network's tensors (builder/onnx_export.py; `onnx_bytes`): every weight in its
                 stored format as above, less the scales the graph does not carry (an FP8 / NVFP4 linear's
                 fp32 `input_scale`, the KV `k_scale` / `v_scale`), A_log as the fp32 A; the MTP graph shares the embedding and
                 LM head with the backbone's data file, so nothing counts twice.
    activations  an estimate for one forward of `max_num_tokens` tokens: a few hidden-width buffers, the
                 widest projection output and the routed-expert permutation buffers, in model dtype;
                 plus a fixed 2 GiB workspace (CUDA context, GEMM/NCCL workspaces, CUDA graphs).

Budget (the way TensorRT-LLM sizes its caches): the KV + Mamba caches get `free_gpu_memory_fraction`
of what is left after weights, activations and workspace. A sequence costs `max_seq_len` tokens of KV
plus its state and logits, so `max_batch = floor(left · fraction / per_sequence)`; the plan fits when
the weights fit at all and `batch <= max_batch`. The CPU target budgets against host RAM.
Attention data-parallelism would hold full KV for batch/G sequences instead of KV/G for batch: the
same bytes per GPU, so the planner does not model it separately.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from builder.targets import Target, get_target
from trtllm_nemotron.config import PRESETS, NemotronHConfig, expected_tensors
from trtllm_nemotron.errors import BuildError

GiB = 1 << 30
WORKSPACE_BYTES_GPU = 2 * GiB
WORKSPACE_BYTES_CPU = GiB // 2
DEFAULT_MAX_NUM_TOKENS = 8192  # TorchLlmArgs.max_num_tokens default

_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "float8": 1}
# Build-time estimate (the quantize stage dominates a Super build): MB (1e6 B) of bf16 source per second.
# CPU: `make bench-quant` median on the 2-core development machine, nvfp4-super, 8 x 128 calibration tokens, the
# 0.64 GB checkpoint, measured while the machine was shared (load 8-15; docs/benchmarks.md) -- a pessimistic
# figure. GPU targets: every quantize stage runs on the GPU (`quantize --device cuda`), so reading the source
# bounds it; 2000 MB/s is an assumed local-NVMe sequential read, not a measurement.
QUANT_MB_S_CPU = 42.0
QUANT_MB_S_GPU_HOST = 2000.0


def estimate_quantize_seconds(cfg: NemotronHConfig, target: Target) -> tuple[int, float, str]:
    """(bf16 source bytes, estimated quantize seconds, basis of the rate) for `cfg` on `target`'s host."""
    src = sum(math.prod(s.shape) * (4 if s.dtype == "float32" else 2) for s in expected_tensors(cfg).values())
    if target.is_gpu:
        rate, basis = QUANT_MB_S_GPU_HOST, "assumed NVMe read bound, stages on the GPU"
    else:
        rate, basis = QUANT_MB_S_CPU, "measured by make bench-quant on 2 CPU cores"
    return src, src / 1e6 / rate, f"{rate:.0f} MB/s, {basis}"


# TensorRT-LLM tensorrt_llm/_torch/models/modeling_nemotron_h.py (at 00620eb0), NemotronHForCausalLM.__init__:
# `if not enable_attention_dp and tp_size not in [1, 2, 4, 8]: raise ValueError("TP has to be either 1, 2, 4
# or 8")`. We write tensor_parallel_size = moe_expert_parallel_size = GPUs, so the GPU count is limited too.
NEMOTRON_H_TP_SIZES = (1, 2, 4, 8)
_REPLICATED = ("fc1_latent_proj", "fc2_latent_proj", "mixer.gate.")  # not TP/EP-sharded by TensorRT-LLM


PREFIX_BLOCK = 64  # tokens per prefix-cache block (the runtime's default `prefix_block`)


def dtype_bytes(name: str) -> int:
    key = str(name).lower().replace("torch.", "")
    if key not in _DTYPE_BYTES:
        raise BuildError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[key]


def fmt_bytes(n: float) -> str:
    """Decimal units, e.g. `79.31 GB`, `4.26 MB`."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{int(n)} B"


def model_family(cfg: NemotronHConfig) -> str | None:
    """`super-120b` / `nano-30b` when `cfg` has that released model's architecture, else None."""
    keys = ("pattern", "hidden_size", "n_routed_experts", "moe_intermediate_size", "mamba_num_heads")
    for name in ("super-120b", "nano-30b"):
        ref = PRESETS[name]
        if all(getattr(cfg, k) == getattr(ref, k) for k in keys):
            return name
    return None


def recipe_formats(cfg: NemotronHConfig, recipe: str) -> tuple[dict[str, str | None], str | None]:
    """Cached wrapper of `_recipe_formats` (Super has ~43k tensors; the recipe table is fnmatch-based)."""
    try:
        key = (hash(cfg), cfg, recipe)
    except TypeError:
        return _recipe_formats(cfg, recipe)
    if key not in _FORMATS_CACHE:
        _FORMATS_CACHE[key] = _recipe_formats(cfg, recipe)
    return _FORMATS_CACHE[key]


def _recipe_formats(cfg: NemotronHConfig, recipe: str) -> tuple[dict[str, str | None], str | None]:
    """({tensor name: "nvfp4" | "fp8" | None}, kv-cache format) for `recipe` applied to `cfg`.

    Only 2-D `.weight` matrices can be quantized; the recipe is asked about their module name
    (the tensor name without `.weight`). `bf16` needs no recipe object: nothing is quantized.
    """
    tensors = expected_tensors(cfg)
    if recipe == "bf16":
        return {name: None for name in tensors}, None
    from trtllm_nemotron.quant.recipes import get_recipe

    r = get_recipe(recipe)
    fmts: dict[str, str | None] = {}
    for name, spec in tensors.items():
        fmt = None
        if name.endswith(".weight") and len(spec.shape) == 2 and spec.dtype != "float32":
            fmt = r.format_for(name[: -len(".weight")])
        fmts[name] = fmt.lower() if fmt else None  # the recipe table spells "NVFP4" / "FP8"
    kv = getattr(r, "kv_cache", None)
    return fmts, (kv.lower() if kv else None)


def onnx_bytes(cfg: NemotronHConfig, recipe: str) -> int:
    """Tensor bytes of the ONNX export of `cfg` quantized with `recipe` (see the module docstring)."""
    fmts, _ = recipe_formats(cfg, recipe)
    model_b = dtype_bytes(cfg.torch_dtype)
    total = 0
    for name, spec in expected_tensors(cfg).items():
        fmt = fmts[name]
        fp32 = spec.dtype == "float32" or name.endswith(".A_log")  # exported as A = -exp(A_log), fp32
        total += tensor_bytes(math.prod(spec.shape), fmt, model_b, fp32) - (4 if fmt else 0)
    return total


def tensor_bytes(numel: int, fmt: str | None, model_dtype_bytes: int, is_fp32: bool) -> int:
    """Stored bytes of one tensor of `numel` elements in `fmt` (see the module docstring)."""
    if is_fp32:
        return 4 * numel
    if fmt is None:
        return model_dtype_bytes * numel
    if fmt == "fp8":
        return numel + 8
    if fmt == "nvfp4":
        return math.ceil(numel / 2) + math.ceil(numel / 16) + 8
    raise BuildError(f"recipe returned unknown weight format {fmt!r}; expected 'nvfp4', 'fp8' or None")


_WEIGHTS_CACHE: dict[Any, tuple[int, int, dict[str, int], tuple[str | None, ...]]] = {}
_FORMATS_CACHE: dict[Any, tuple[dict[str, str | None], str | None]] = {}


def _weights(cfg: NemotronHConfig, recipe: str) -> tuple[int, int, dict[str, int], tuple[str | None, ...]]:
    """(total bytes, TP/EP-sharded bytes, bytes by format, formats used); cached per (config, recipe)."""
    try:
        key = (hash(cfg), cfg, recipe)
    except TypeError:  # an unhashable field (e.g. a list eos_token_id): no caching
        key = None
    if key is not None and key in _WEIGHTS_CACHE:
        return _WEIGHTS_CACHE[key]
    fmts, _ = recipe_formats(cfg, recipe)
    model_b = dtype_bytes(cfg.torch_dtype)
    total = sharded = 0
    by_fmt: dict[str, int] = {}
    used: list[str | None] = []
    for name, spec in expected_tensors(cfg).items():
        fmt = fmts[name]
        b = tensor_bytes(math.prod(spec.shape), fmt, model_b, spec.dtype == "float32")
        total += b
        label = fmt or ("float32" if spec.dtype == "float32" else cfg.torch_dtype)
        by_fmt[label] = by_fmt.get(label, 0) + b
        if fmt not in used:
            used.append(fmt)
        if len(spec.shape) >= 2 and not any(r in name for r in _REPLICATED):
            sharded += b
    if recipe != "bf16" and recipe_formats(cfg, recipe)[1] == "fp8":
        kv_scales = 8 * cfg.pattern.count("*")  # fp32 k_scale + v_scale per (backbone) attention layer
        total += kv_scales
        by_fmt["float32"] = by_fmt.get("float32", 0) + kv_scales
    out = (total, sharded, by_fmt, tuple(used))
    if key is not None:
        _WEIGHTS_CACHE[key] = out
    return out


@dataclass(frozen=True)
class Plan:
    """A memory plan for one (model, recipe, target, GPUs, context, batch). All sizes in bytes, per GPU."""

    target: str
    recipe: str
    gpus: int
    max_seq_len: int
    batch: int
    mtp: int
    max_num_tokens: int
    capacity_bytes: int
    free_fraction: float
    weights_bytes: int  # whole model, all GPUs together
    weights_by_format: dict[str, int]
    weights_per_gpu: int
    kv_dtype: str
    kv_bytes_per_token: int
    num_attention_layers: int
    num_mamba_layers: int
    conv_bytes_per_layer: int  # one Mamba layer, one sequence, this TP
    ssm_bytes_per_layer: int
    ssm_dtype: str
    state_bytes_per_seq: int  # all Mamba layers, including the MTP per-draft-step copies
    logits_bytes_per_seq: int
    activation_bytes: int
    workspace_bytes: int
    family: str | None = None
    weight_modes: dict[str, str] = field(default_factory=dict)
    onnx_bytes: int = 0  # the ONNX export's tensor bytes (all devices)
    source_bytes: int = 0  # the bf16 checkpoint the build quantizes
    quantize_seconds_est: float = 0.0
    quantize_rate: str = ""

    @property
    def per_seq_bytes(self) -> int:
        return (
            self.kv_bytes_per_token * self.max_seq_len + self.state_bytes_per_seq + self.logits_bytes_per_seq
        )

    @property
    def prefix_block_bytes(self) -> int:
        """One prefix-cache block (PREFIX_BLOCK tokens): its KV plus a snapshot of every Mamba layer's state at the
        block boundary (runtime/prefix_cache.py): what reusing a prefix costs a hybrid model per block."""
        return self.kv_bytes_per_token * PREFIX_BLOCK + self.num_mamba_layers * (
            self.conv_bytes_per_layer + self.ssm_bytes_per_layer
        )

    @property
    def fixed_bytes(self) -> int:
        return self.weights_per_gpu + self.activation_bytes + self.workspace_bytes

    @property
    def cache_budget_bytes(self) -> int:
        return max(0, int((self.capacity_bytes - self.fixed_bytes) * self.free_fraction))

    @property
    def weights_fit(self) -> bool:
        return self.fixed_bytes < self.capacity_bytes

    @property
    def max_batch(self) -> int:
        """Largest number of concurrent `max_seq_len` sequences whose caches fit (0 if none)."""
        if not self.weights_fit:
            return 0
        return self.cache_budget_bytes // max(1, self.per_seq_bytes)

    @property
    def fits(self) -> bool:
        return self.weights_fit and self.batch <= self.max_batch

    def min_gpus_hint(self) -> str:
        if self.weights_fit:
            return ""
        need = math.ceil(
            self.weights_bytes / max(1, self.capacity_bytes - self.workspace_bytes - self.activation_bytes)
        )
        return f"the weights alone need >= {need} x {self.target}"

    def explain(self) -> str:
        """A human-readable breakdown ending in the verdict."""
        g = fmt_bytes
        fam = f" ({self.family})" if self.family else ""
        lines = [
            f"memory plan: recipe {self.recipe}{fam} on {self.gpus} x {self.target}, "
            f"max_seq_len {self.max_seq_len}, batch {self.batch}, MTP {self.mtp}",
            f"  capacity per device      {g(self.capacity_bytes)}",
            f"  weights (all devices)    {g(self.weights_bytes)}  "
            + ", ".join(f"{k} {g(v)}" for k, v in sorted(self.weights_by_format.items())),
            f"  weights per device       {g(self.weights_per_gpu)}",
            f"  ONNX export (est.)       {g(self.onnx_bytes)}  (onnx/: model.onnx + mtp.onnx external data)",
            f"  activations (est.)       {g(self.activation_bytes)}  ({self.max_num_tokens} tokens per step)",
            f"  workspace                {g(self.workspace_bytes)}",
            f"  KV per token             {self.kv_bytes_per_token:,} B  "
            f"({self.num_attention_layers} attention layers, {self.kv_dtype})",
            f"  Mamba state per layer    conv {self.conv_bytes_per_layer:,} B + ssm {self.ssm_bytes_per_layer:,} B "
            f"({self.ssm_dtype}) = {(self.conv_bytes_per_layer + self.ssm_bytes_per_layer) / 1e6:.2f} MB",
            f"  state per sequence       {g(self.state_bytes_per_seq)}  ({self.num_mamba_layers} Mamba layers"
            + (f", x{self.mtp + 2} with MTP draft-step copies)" if self.mtp else ")"),
            f"  per sequence             {g(self.per_seq_bytes)}  (KV for {self.max_seq_len} tokens + state + logits)",
            f"  prefix cache per block   {g(self.prefix_block_bytes)}  ({PREFIX_BLOCK} tokens of KV + a Mamba state "
            f"snapshot, {self.prefix_block_bytes / max(1, self.kv_bytes_per_token * PREFIX_BLOCK):.0f}x the KV alone)",
            f"  cache budget             {g(self.cache_budget_bytes)}  "
            f"({self.free_fraction:.0%} of what is left after weights, activations, workspace)",
            f"  build time (est.)        quantize {g(self.source_bytes)} bf16 in ~{_duration(self.quantize_seconds_est)}"
            f" ({self.quantize_rate})",
        ]
        if not self.weights_fit:
            lines.append(
                f"DOES NOT FIT: weights + activations + workspace = {g(self.fixed_bytes)} > "
                f"{g(self.capacity_bytes)} per device; {self.min_gpus_hint()}, or use a smaller recipe"
            )
        elif not self.fits:
            lines.append(
                f"DOES NOT FIT: batch {self.batch} needs {g(self.batch * self.per_seq_bytes)} of cache, budget is "
                f"{g(self.cache_budget_bytes)}; the largest batch that fits is {self.max_batch}"
            )
        else:
            lines.append(f"FITS: largest batch at max_seq_len {self.max_seq_len} is {self.max_batch}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            fits=self.fits,
            max_batch=self.max_batch,
            per_seq_bytes=self.per_seq_bytes,
            cache_budget_bytes=self.cache_budget_bytes,
            prefix_block_bytes=self.prefix_block_bytes,
        )
        return d

    def check(self) -> Plan:
        """Raise BuildError with the full breakdown unless the plan fits."""
        if not self.fits:
            raise BuildError("refusing an impossible plan:\n" + self.explain())
        return self


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # non-POSIX: assume a 16 GB laptop
        return 16 * 10**9


def plan_memory(
    config: NemotronHConfig,
    target: str | Target,
    *,
    recipe: str,
    gpus: int = 1,
    max_seq_len: int,
    batch: int,
    mtp: int,
    max_num_tokens: int | None = None,
    ssm_dtype: str | None = None,
    free_fraction: float | None = None,
) -> Plan:
    """Plan the memory of `config` quantized with `recipe` on `gpus` x `target` (see module docstring)."""
    t = target if isinstance(target, Target) else get_target(target)
    cfg = config
    if gpus < 1 or (not t.is_gpu and gpus != 1):
        raise BuildError(f"gpus must be >= 1 (and 1 for the cpu target), got {gpus} for {t.name}")
    if t.is_gpu and gpus not in NEMOTRON_H_TP_SIZES:
        raise BuildError(
            f"--gpus {gpus}: TensorRT-LLM's NemotronH runs with tensor-parallel size 1, 2, 4 or 8 only "
            "(NemotronHForCausalLM.__init__ raises 'TP has to be either 1, 2, 4 or 8'); choose one of "
            f"{list(NEMOTRON_H_TP_SIZES)}"
        )
    if max_seq_len < 1 or batch < 1 or mtp < 0:
        raise BuildError(f"need max_seq_len >= 1, batch >= 1, mtp >= 0; got {max_seq_len}, {batch}, {mtp}")
    if mtp and not cfg.num_nextn_predict_layers:
        raise BuildError(
            f"MTP {mtp} asked for, but the model has no MTP layers (num_nextn_predict_layers = 0); use --mtp 0"
        )
    tp = gpus
    model_b = dtype_bytes(cfg.torch_dtype)

    # ---- weights ----
    total, sharded, by_fmt, used_fmts = _weights(cfg, recipe)
    modes = {str(f or "bf16"): t.weight_mode(f) for f in used_fmts}
    per_gpu = total - sharded + math.ceil(sharded / tp)
    _, kv_fmt = recipe_formats(cfg, recipe) if recipe != "bf16" else ({}, None)

    # ---- caches ----
    mtp_chars = cfg.mtp_pattern * cfg.num_nextn_predict_layers if mtp else ""
    n_attn = cfg.pattern.count("*") + mtp_chars.count("*")
    n_mamba = cfg.pattern.count("M") + mtp_chars.count("M")
    kv_dtype = "fp8" if kv_fmt == "fp8" else cfg.torch_dtype
    kv_heads = math.ceil(cfg.num_key_value_heads / tp)  # replicated when kv_heads < TP
    kv_per_token = n_attn * 2 * kv_heads * cfg.head_dim * dtype_bytes(kv_dtype)
    ssm_dtype = ssm_dtype or (t.mamba_ssm_cache_dtype if t.is_gpu else cfg.mamba_ssm_cache_dtype)
    if ssm_dtype == "auto":
        ssm_dtype = cfg.mamba_ssm_cache_dtype
    conv_layer = math.ceil(cfg.conv_dim / tp) * (cfg.conv_kernel - 1) * model_b
    ssm_layer = (
        math.ceil(cfg.mamba_num_heads / tp) * cfg.mamba_head_dim * cfg.ssm_state_size * dtype_bytes(ssm_dtype)
    )
    copies = 1 + (mtp + 1 if mtp else 0)
    state_per_seq = n_mamba * (conv_layer + ssm_layer) * copies
    logits_per_seq = (mtp + 1) * math.ceil(cfg.vocab_size / tp) * 4

    # ---- activations (estimate) ----
    tokens = max_num_tokens or max(DEFAULT_MAX_NUM_TOKENS, batch * (mtp + 1))
    q = cfg.num_attention_heads * cfg.head_dim
    widest = max(
        cfg.d_in_proj,
        q + 2 * cfg.num_key_value_heads * cfg.head_dim,
        cfg.intermediate_size,
        cfg.shared_expert_size,
        2 * cfg.hidden_size,
    )
    routed = (
        cfg.num_experts_per_tok * max(cfg.expert_dim, cfg.moe_intermediate_size) if "E" in cfg.pattern else 0
    )
    activation = (
        tokens * model_b * (4 * cfg.hidden_size + 2 * math.ceil(widest / tp) + 2 * math.ceil(routed / tp))
    )

    capacity = (t.memory_bytes if t.is_gpu else None) or _host_memory_bytes()
    src_bytes, quant_s, quant_rate = estimate_quantize_seconds(cfg, t)
    return Plan(
        target=t.name,
        recipe=recipe,
        gpus=gpus,
        max_seq_len=max_seq_len,
        batch=batch,
        mtp=mtp,
        max_num_tokens=tokens,
        capacity_bytes=int(capacity),
        free_fraction=free_fraction if free_fraction is not None else t.free_gpu_memory_fraction,
        weights_bytes=total,
        weights_by_format=by_fmt,
        weights_per_gpu=per_gpu,
        kv_dtype=kv_dtype,
        kv_bytes_per_token=kv_per_token,
        num_attention_layers=n_attn,
        num_mamba_layers=n_mamba,
        conv_bytes_per_layer=conv_layer,
        ssm_bytes_per_layer=ssm_layer,
        ssm_dtype=ssm_dtype,
        state_bytes_per_seq=state_per_seq,
        logits_bytes_per_seq=logits_per_seq,
        activation_bytes=activation,
        workspace_bytes=WORKSPACE_BYTES_GPU if t.is_gpu else WORKSPACE_BYTES_CPU,
        family=model_family(cfg),
        weight_modes=modes,
        onnx_bytes=onnx_bytes(cfg, recipe),
        source_bytes=src_bytes,
        quantize_seconds_est=round(quant_s, 1),
        quantize_rate=quant_rate,
    )


# NVIDIA's serving batch for the released models (spec §2.5): the MTP recipe captures CUDA graphs up to
# 64 sequences, the throughput recipe up to 256; TorchLlmArgs' own max_batch_size default is 2048.
RECIPE_BATCH_MTP = 64
RECIPE_BATCH = 256
DEFAULT_MAX_BATCH = 2048
MAX_DEFAULT_SEQ_LEN = 131072


def plan_for_build(
    config: NemotronHConfig,
    target: str | Target,
    *,
    recipe: str,
    mtp: int,
    gpus: int | None = None,
    max_seq_len: int | None = None,
    batch: int | None = None,
) -> Plan:
    """The plan a build sizes its TensorRT-LLM options from; refuses (BuildError) if nothing fits.

    Super / Nano are sized at their real scale: the fewest GPUs (1, 2, 4, 8) whose memory holds the
    weights, and NVIDIA's recipe batch (64 with MTP, 256 without) capped by what fits. Any other model
    is sized by the planner alone: one GPU and the largest batch that fits (at most 2048).
    Explicit `gpus`, `max_seq_len`, `batch` always win; an explicit batch that does not fit is refused.
    """
    t = target if isinstance(target, Target) else get_target(target)
    family = model_family(config)
    seq = max_seq_len or min(config.max_position_embeddings, MAX_DEFAULT_SEQ_LEN)
    if gpus is None:
        candidates = [1, 2, 4, 8] if (family and t.is_gpu) else [1]
    else:
        candidates = [gpus]
    probe = None
    for g in candidates:
        probe = plan_memory(config, t, recipe=recipe, gpus=g, max_seq_len=seq, batch=1, mtp=mtp)
        if probe.fits:
            break
    assert probe is not None
    if not probe.fits:
        raise BuildError("refusing an impossible plan:\n" + probe.explain())
    if batch is None:
        want = (RECIPE_BATCH_MTP if mtp else RECIPE_BATCH) if family else DEFAULT_MAX_BATCH
        batch = max(1, min(want, probe.max_batch))
    plan = plan_memory(config, t, recipe=recipe, gpus=probe.gpus, max_seq_len=seq, batch=batch, mtp=mtp)
    return plan.check()
