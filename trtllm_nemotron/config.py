"""NemotronH configuration: a frozen dataclass read from (and written back to) a HF `config.json`.

Design notes
- One class for the whole family (Nemotron-H, Nano v2, Nemotron 3 Nano/Super). The layer stack is the
  pattern string (`M` Mamba-2, `*` attention, `E` MoE, `-` dense MLP), read from either
  `hybrid_override_pattern` (legacy string) or `layers_block_type` (HF v5 list; legacy names accepted).
- Defaults are HF transformers 5.23's `NemotronHConfig` defaults, so a sparse config.json means here what
  it means to HF (Ref: transformers 5.23.0 `models/nemotron_h/configuration_nemotron_h.py`).
- Lossless round trip: `from_dict` keeps the raw dict; `to_dict` writes every key that was read under the
  name it was read with (legacy aliases included) and adds a canonical key only where a field differs
  from the default. So `to_dict(from_dict(d)) == d` for any valid `d`.
- The expected tensor list (spec §3.2) lives here, because parameter counts derive from it:
  `expected_tensors(cfg)` is the single source for validation, counts, make-tiny and quantization.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtllm_nemotron.errors import ConfigError

MAX_DRAFT_LEN = 16  # MTP draft tokens per step the runtime (and so `build --mtp`) accepts
LAYER_CHARS = {"M": "linear_attention", "*": "full_attention", "E": "moe", "-": "mlp"}
_NAME_TO_CHAR = {v: k for k, v in LAYER_CHARS.items()}
# legacy list names (remote code / HF <= 5.2): remapped by HF v5's remap_legacy_layer_types
_NAME_TO_CHAR.update({"mamba": "M", "attention": "*", "moe": "E", "mlp": "-"})
_LEGACY_NAMES = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp"}

# legacy alias -> canonical field (HF v5 NemotronHConfig.__post_init__)
ALIASES: dict[str, str] = {
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min",
    "mamba_dt_max": "time_step_max",
    "mamba_dt_limit": "time_step_limit",
    "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_chunk_size": "chunk_size",
    "attention_head_dim": "head_dim",
    "norm_eps": "layer_norm_epsilon",
}

SUPPORTED_MODEL_TYPES = ("nemotron_h",)


@dataclass(frozen=True)
class NemotronHConfig:
    # layer stack
    pattern: str = "ME*-"
    mtp_pattern: str = "*E"
    num_nextn_predict_layers: int = 0
    # embeddings / head
    vocab_size: int = 131072
    hidden_size: int = 4096
    tie_word_embeddings: bool = False
    # attention
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    attention_bias: bool = False
    attention_dropout: float = 0.0
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    rope_theta: float | None = None  # present in released configs, unused (NoPE)
    partial_rotary_factor: float | None = None
    # dense MLP
    intermediate_size: int = 21504
    mlp_hidden_act: str = "relu2"
    mlp_bias: bool = False
    # mamba
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    chunk_size: int = 128
    expand: int = 2
    use_conv_bias: bool = True
    mamba_hidden_act: str = "silu"
    mamba_proj_bias: bool = False
    use_bias: bool = False  # in_proj / out_proj bias (HF name)
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    mamba_ssm_cache_dtype: str = "float32"
    # MoE
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 7688
    n_shared_experts: int = 1
    moe_shared_expert_intermediate_size: int = 7688
    moe_latent_size: int | None = None
    moe_shared_expert_overlap: bool = True
    routed_scaling_factor: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    # misc
    layer_norm_epsilon: float = 1e-5
    residual_in_fp32: bool = False
    rescale_prenorm_residual: bool = True
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    num_logits_to_keep: int = 1
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    torch_dtype: str = "bfloat16"
    # the dict this config was read from (None for presets); excluded from equality
    raw: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        bad = sorted(set(self.pattern) - set(LAYER_CHARS))
        if not self.pattern or bad:
            raise ConfigError(
                f"hybrid_override_pattern {self.pattern!r} has unknown layer characters {bad}; "
                f"expected a non-empty string over {''.join(LAYER_CHARS)} (M mamba, * attention, E moe, - mlp)"
            )
        if self.num_nextn_predict_layers < 0:
            raise ConfigError(f"num_nextn_predict_layers must be >= 0, got {self.num_nextn_predict_layers}")
        if self.num_nextn_predict_layers and (
            not self.mtp_pattern or set(self.mtp_pattern) - set(LAYER_CHARS)
        ):
            raise ConfigError(
                f"mtp_hybrid_override_pattern {self.mtp_pattern!r} is not a valid layer pattern"
            )
        checks: list[tuple[bool, str]] = [
            (self.hidden_size > 0 and self.vocab_size > 0, "hidden_size and vocab_size must be positive"),
        ]
        if "*" in self.pattern + self._mtp_chars():
            checks.append(
                (
                    self.num_key_value_heads > 0 and self.num_attention_heads % self.num_key_value_heads == 0,
                    f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                    f"num_key_value_heads ({self.num_key_value_heads})",
                )
            )
        if "M" in self.pattern:
            checks.append(
                (
                    self.n_groups > 0 and self.mamba_num_heads % self.n_groups == 0,
                    f"mamba_num_heads ({self.mamba_num_heads}) must be a multiple of n_groups ({self.n_groups})",
                )
            )
        if "E" in self.pattern + self._mtp_chars():
            e, k, g, tg = self.n_routed_experts, self.num_experts_per_tok, self.n_group, self.topk_group
            checks += [
                (0 < k <= e, f"num_experts_per_tok ({k}) must be in 1..n_routed_experts ({e})"),
                (g > 0 and e % g == 0, f"n_routed_experts ({e}) must be a multiple of n_group ({g})"),
                (0 < tg <= g, f"topk_group ({tg}) must be in 1..n_group ({g})"),
                (
                    g == 1 or tg * (e // g) >= k,
                    f"topk_group ({tg}) groups of {e // max(g, 1)} experts cannot hold num_experts_per_tok ({k})",
                ),
            ]
            if g > 1:
                checks.append(
                    (e // g >= 2, f"group-limited routing needs >= 2 experts per group, got {e // g}")
                )
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"invalid NemotronH config: {msg}")

    def _mtp_chars(self) -> str:
        return self.mtp_pattern if self.num_nextn_predict_layers else ""

    # ---- derived dimensions (spec §2.2) ----
    @property
    def num_hidden_layers(self) -> int:
        return len(self.pattern)

    @property
    def d_inner(self) -> int:
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.ssm_state_size

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.n_groups * self.ssm_state_size + self.mamba_num_heads

    @property
    def norm_group_size(self) -> int:
        return self.d_inner // self.n_groups

    @property
    def heads_per_group(self) -> int:
        return self.mamba_num_heads // self.n_groups

    @property
    def expert_dim(self) -> int:
        """Width experts read and write (X): the latent size for LatentMoE, else hidden_size."""
        return self.moe_latent_size or self.hidden_size

    @property
    def shared_expert_size(self) -> int:
        return self.moe_shared_expert_intermediate_size * self.n_shared_experts

    @property
    def mtp_num_layers(self) -> int:
        return len(self.mtp_pattern) * self.num_nextn_predict_layers

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    # ---- (de)serialisation ----
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NemotronHConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        mt = d.get("model_type")
        if mt == "nemotron_h_puzzle" or "NemotronHPuzzleForCausalLM" in (d.get("architectures") or []):
            raise ConfigError(
                "model_type 'nemotron_h_puzzle' (NemotronHPuzzleForCausalLM, per-layer MoE sizes in "
                "block_configs) is not supported; only uniform 'nemotron_h' models are"
            )
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {mt!r}: trtllm-nemotron handles {list(SUPPORTED_MODEL_TYPES)} "
                "(NemotronHForCausalLM: Nemotron-H, Nemotron 3 Nano/Super); point it at such a checkpoint"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"raw", "pattern", "mtp_pattern"}
        kw: dict[str, Any] = {}
        for key, value in d.items():
            canon = ALIASES.get(key, key)
            if canon in names and (key == canon or canon not in d):
                kw[canon] = value
        # layer stack: the HF v5 list wins over the legacy string, as in HF's __post_init__
        if d.get("layers_block_type") is not None:
            kw["pattern"] = _list_to_pattern(d["layers_block_type"], "layers_block_type")
        elif "hybrid_override_pattern" in d:
            kw["pattern"] = str(d["hybrid_override_pattern"])
        else:
            raise ConfigError(
                "config.json has neither 'hybrid_override_pattern' nor 'layers_block_type': "
                'the layer stack is unknown. Add e.g. "hybrid_override_pattern": "MEM*E"'
            )
        if "num_hidden_layers" in d and d["num_hidden_layers"] != len(kw["pattern"]):
            raise ConfigError(
                f"num_hidden_layers ({d['num_hidden_layers']}) != length of the layer pattern "
                f"({len(kw['pattern'])}, {kw['pattern']!r}); fix one of them"
            )
        if d.get("mtp_layers_block_type") is not None:
            kw["mtp_pattern"] = _list_to_pattern(d["mtp_layers_block_type"], "mtp_layers_block_type")
        elif d.get("mtp_hybrid_override_pattern") is not None:
            kw["mtp_pattern"] = str(d["mtp_hybrid_override_pattern"])
        if "time_step_limit" in kw and kw["time_step_limit"] is not None:
            kw["time_step_limit"] = tuple(_json_float(v) for v in kw["time_step_limit"])
        elif "time_step_limit" in kw:
            del kw["time_step_limit"]
        if kw.get("num_key_value_heads") is None and "num_attention_heads" in kw:
            kw["num_key_value_heads"] = kw["num_attention_heads"]
        if kw.get("head_dim") is None:
            kw.pop("head_dim", None)
            if "hidden_size" in kw or "num_attention_heads" in kw:
                kw["head_dim"] = kw.get("hidden_size", 4096) // kw.get("num_attention_heads", 32)
        if "torch_dtype" not in kw and "dtype" in d:
            kw["torch_dtype"] = d["dtype"]
        try:
            return cls(**kw, raw=copy.deepcopy(d))
        except TypeError as e:  # a field of the wrong JSON type
            raise ConfigError(f"invalid NemotronH config: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> NemotronHConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}; pass a HF checkpoint directory or its config.json")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); re-download or fix the file") from e
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict. Keys read from a file keep their original names; nothing is lost."""
        raw = copy.deepcopy(self.raw) if self.raw is not None else None
        out: dict[str, Any] = raw if raw is not None else {"architectures": ["NemotronHForCausalLM"]}
        out["model_type"] = "nemotron_h"
        for f in dataclasses.fields(self):
            if f.name in ("raw", "pattern", "mtp_pattern"):
                continue
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.name == "time_step_limit":
                value = list(value)
                default = [0.0, math.inf]
            keys = [k for k, c in ALIASES.items() if c == f.name and raw is not None and k in raw]
            key = f.name if (raw is None or f.name in raw or not keys) else keys[0]
            if raw is not None and key in raw:
                if (
                    f.name == "time_step_limit"
                    and raw[key] is not None
                    and [_json_float(v) for v in raw[key]] == value
                ):
                    continue
                if raw[key] == value:
                    continue
                out[key] = value
            elif value != default or raw is None:
                out[key] = value
        self._write_pattern(out, raw, "hybrid_override_pattern", "layers_block_type", self.pattern)
        if self.num_nextn_predict_layers or (
            raw is not None and ("mtp_hybrid_override_pattern" in raw or "mtp_layers_block_type" in raw)
        ):
            self._write_pattern(
                out, raw, "mtp_hybrid_override_pattern", "mtp_layers_block_type", self.mtp_pattern
            )
        if raw is None:
            out["num_hidden_layers"] = self.num_hidden_layers
        elif "num_hidden_layers" in raw:
            out["num_hidden_layers"] = self.num_hidden_layers
        return out

    @staticmethod
    def _write_pattern(out: dict, raw: dict | None, str_key: str, list_key: str, pattern: str) -> None:
        wrote = False
        if raw is not None and raw.get(list_key) is not None:
            legacy = any(n in ("mamba", "attention") for n in raw[list_key])
            names = _LEGACY_NAMES if legacy else LAYER_CHARS
            new = [names[c] for c in pattern]
            if new != raw[list_key]:
                out[list_key] = new
            wrote = True
        if raw is None or str_key in raw or not wrote:
            out[str_key] = pattern

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")

    def replace(self, **changes: Any) -> NemotronHConfig:
        """A copy with fields changed; the raw dict is kept so unknown keys survive."""
        return dataclasses.replace(self, **changes)

    # ---- parameter counts (from the config alone) ----
    def parameter_counts(self) -> dict[str, int]:
        """total, active (per token), mtp, embeddings; all tensors of §3.2 including the MTP block."""
        total = active = mtp = emb = 0
        k, e = self.num_experts_per_tok, self.n_routed_experts
        for name, spec in expected_tensors(self).items():
            n = math.prod(spec.shape)
            total += n
            if name.startswith("mtp."):
                mtp += n
            if name in ("backbone.embeddings.weight", "lm_head.weight"):
                emb += n
            if name.startswith("mtp."):
                continue  # the draft block is not part of the per-token backbone cost
            active += n * k // e if ".experts." in name else n  # a token touches k of the E experts
        return {"total": total, "active": active, "mtp": mtp, "embeddings": emb, "backbone": total - mtp}


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str = "model"  # "model" (the checkpoint's dtype, bf16 for released models) or "float32"


def _json_float(v: Any) -> float:
    """A float from config.json; transformers 5.x writes inf as {"__float__": "Infinity"}."""
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"])
    return float(v)


def _list_to_pattern(names: Any, key: str) -> str:
    if not isinstance(names, list):
        raise ConfigError(f"{key} must be a list of layer type names, got {type(names).__name__}")
    bad = [n for n in names if n not in _NAME_TO_CHAR]
    if bad:
        raise ConfigError(
            f"{key} has unknown layer types {sorted(set(map(str, bad)))}; expected {sorted(_NAME_TO_CHAR)}"
        )
    return "".join(_NAME_TO_CHAR[n] for n in names)


def _mixer_tensors(cfg: NemotronHConfig, char: str, prefix: str) -> dict[str, TensorSpec]:
    """Tensors of one mixer, keyed by full name. Shapes in nn.Linear layout [out, in]."""
    D = cfg.hidden_size
    t: dict[str, TensorSpec] = {}
    if char == "M":
        t[f"{prefix}in_proj.weight"] = TensorSpec((cfg.d_in_proj, D))
        if cfg.use_bias:
            t[f"{prefix}in_proj.bias"] = TensorSpec((cfg.d_in_proj,))
        t[f"{prefix}conv1d.weight"] = TensorSpec((cfg.conv_dim, 1, cfg.conv_kernel))
        if cfg.use_conv_bias:
            t[f"{prefix}conv1d.bias"] = TensorSpec((cfg.conv_dim,))
        for n in ("A_log", "D", "dt_bias"):
            t[f"{prefix}{n}"] = TensorSpec((cfg.mamba_num_heads,))
        t[f"{prefix}norm.weight"] = TensorSpec((cfg.d_inner,))
        t[f"{prefix}out_proj.weight"] = TensorSpec((D, cfg.d_inner))
        if cfg.use_bias:
            t[f"{prefix}out_proj.bias"] = TensorSpec((D,))
    elif char == "*":
        q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        for n, shape in (("q_proj", (q, D)), ("k_proj", (kv, D)), ("v_proj", (kv, D)), ("o_proj", (D, q))):
            t[f"{prefix}{n}.weight"] = TensorSpec(shape)
            if cfg.attention_bias:
                t[f"{prefix}{n}.bias"] = TensorSpec((shape[0],))
    elif char == "E":
        X, F, S, E = cfg.expert_dim, cfg.moe_intermediate_size, cfg.shared_expert_size, cfg.n_routed_experts
        t[f"{prefix}gate.weight"] = TensorSpec((E, D))
        t[f"{prefix}gate.e_score_correction_bias"] = TensorSpec((E,), "float32")
        for j in range(E):
            t[f"{prefix}experts.{j}.up_proj.weight"] = TensorSpec((F, X))
            t[f"{prefix}experts.{j}.down_proj.weight"] = TensorSpec((X, F))
        if cfg.n_shared_experts:
            t[f"{prefix}shared_experts.up_proj.weight"] = TensorSpec((S, D))
            t[f"{prefix}shared_experts.down_proj.weight"] = TensorSpec((D, S))
        if cfg.moe_latent_size:
            t[f"{prefix}fc1_latent_proj.weight"] = TensorSpec((cfg.moe_latent_size, D))
            t[f"{prefix}fc2_latent_proj.weight"] = TensorSpec((D, cfg.moe_latent_size))
    elif char == "-":
        t[f"{prefix}up_proj.weight"] = TensorSpec((cfg.intermediate_size, D))
        t[f"{prefix}down_proj.weight"] = TensorSpec((D, cfg.intermediate_size))
    return t


def expected_tensors(cfg: NemotronHConfig) -> dict[str, TensorSpec]:
    """Every tensor a HF checkpoint of `cfg` holds (spec §3.2), in canonical `backbone.` naming."""
    D = cfg.hidden_size
    t: dict[str, TensorSpec] = {"backbone.embeddings.weight": TensorSpec((cfg.vocab_size, D))}
    for i, ch in enumerate(cfg.pattern):
        t[f"backbone.layers.{i}.norm.weight"] = TensorSpec((D,))
        t.update(_mixer_tensors(cfg, ch, f"backbone.layers.{i}.mixer."))
    t["backbone.norm_f.weight"] = TensorSpec((D,))
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = TensorSpec((cfg.vocab_size, D))
    for j, ch in enumerate(
        cfg.mtp_pattern * cfg.num_nextn_predict_layers if cfg.num_nextn_predict_layers else ""
    ):
        p = f"mtp.layers.{j}."
        if j % len(cfg.mtp_pattern) == 0:
            t[f"{p}enorm.weight"] = TensorSpec((D,))
            t[f"{p}hnorm.weight"] = TensorSpec((D,))
            t[f"{p}eh_proj.weight"] = TensorSpec((D, 2 * D))
        t[f"{p}norm.weight"] = TensorSpec((D,))
        t.update(_mixer_tensors(cfg, ch, f"{p}mixer."))
        if j % len(cfg.mtp_pattern) == len(cfg.mtp_pattern) - 1:
            t[f"{p}final_layernorm.weight"] = TensorSpec((D,))
    return t


# ---- presets ----
_SUPER_PATTERN = "MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*EMEMEMEME"
_NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"

_COMMON: dict[str, Any] = dict(
    vocab_size=131072,
    num_attention_heads=32,
    num_key_value_heads=2,
    head_dim=128,
    max_position_embeddings=262144,
    rope_theta=10000,
    partial_rotary_factor=1.0,
    mamba_head_dim=64,
    ssm_state_size=128,
    n_groups=8,
    conv_kernel=4,
    chunk_size=128,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    moe_shared_expert_overlap=False,
    eos_token_id=2,
)

PRESETS: dict[str, NemotronHConfig] = {
    "super-120b": NemotronHConfig(
        pattern=_SUPER_PATTERN,
        mtp_pattern="*E",
        num_nextn_predict_layers=1,
        hidden_size=4096,
        intermediate_size=2688,
        mamba_num_heads=128,
        n_routed_experts=512,
        num_experts_per_tok=22,
        moe_intermediate_size=2688,
        moe_shared_expert_intermediate_size=5376,
        moe_latent_size=1024,
        routed_scaling_factor=5.0,
        **_COMMON,
    ),
    "nano-30b": NemotronHConfig(
        pattern=_NANO_PATTERN,
        num_nextn_predict_layers=0,
        hidden_size=2688,
        intermediate_size=1856,
        mamba_num_heads=64,
        n_routed_experts=128,
        num_experts_per_tok=6,
        moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712,
        routed_scaling_factor=2.5,
        **_COMMON,
    ),
    # Super's architecture at toy size: M, E (LatentMoE, grouped routing), *, one MTP block.
    # Every linear input dimension is a multiple of 16 so NVFP4 (blocks of 16) applies everywhere.
    "tiny": NemotronHConfig(
        pattern="MEM*EME",
        mtp_pattern="*E",
        num_nextn_predict_layers=1,
        vocab_size=512,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        intermediate_size=128,
        mamba_num_heads=8,
        mamba_head_dim=16,
        ssm_state_size=16,
        n_groups=2,
        conv_kernel=4,
        chunk_size=16,
        n_routed_experts=16,
        num_experts_per_tok=4,
        moe_intermediate_size=32,
        n_shared_experts=1,
        moe_shared_expert_intermediate_size=64,
        moe_latent_size=32,
        moe_shared_expert_overlap=False,
        routed_scaling_factor=2.5,
        n_group=4,
        topk_group=2,
        eos_token_id=2,
    ),
}


def preset(name: str) -> NemotronHConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def load_config(path: str | Path) -> NemotronHConfig:
    """A checkpoint dir, a config.json path, or a preset name."""
    if isinstance(path, str) and path in PRESETS and not Path(path).exists():
        return PRESETS[path]
    return NemotronHConfig.from_json(path)
