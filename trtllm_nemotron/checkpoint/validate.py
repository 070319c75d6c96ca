"""Validate a checkpoint against the tensors its config implies, reporting every problem at once.

Design notes
- The expected list is `config.expected_tensors(cfg)` (spec nemotron_h.md §3.2), the single source shared with
  parameter counts and make-tiny. `validate` compares names, shapes and dtypes using only the safetensors
  headers (no tensor data is read) and returns a list of `Problem`s; `check_checkpoint` raises one
  `CheckpointError` listing all of them (safetensors' strict `load_model` accounting).
- Dtypes: weights may be bf16, fp16 or fp32 (released checkpoints are bf16 with an fp32
  `e_score_correction_bias`; ModelOpt exports that bias in the model dtype, so any float is accepted).
- Quantized (ModelOpt) checkpoints (spec deployment.md §5.5–5.6): for every linear that `reader.quantization`
  marks quantized, the weight is replaced by its packed form plus scale tensors:
      NVFP4  weight uint8 [out, in/2]  weight_scale float8_e4m3fn [out, in/16]  weight_scale_2 f32 []  input_scale f32 []
      FP8    weight float8_e4m3fn [out, in]  weight_scale f32 []  input_scale f32 []
  and, with an FP8 KV cache, `k_proj.k_scale` / `v_proj.v_scale` f32 [] on backbone attention layers.
  Quantizable linears are the `*_proj` linears of the backbone and `lm_head` (ModelOpt sees the HF model, which
  has no MTP, so `mtp.*` is always unquantized); the router `gate` is not an nn.Linear and stays unquantized.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from trtllm_nemotron.checkpoint.formats import NVFP4_BLOCK
from trtllm_nemotron.checkpoint.reader import ST_DTYPES as _ST_NAMES
from trtllm_nemotron.checkpoint.reader import CheckpointReader
from trtllm_nemotron.config import TensorSpec, expected_tensors
from trtllm_nemotron.errors import CheckpointError

FLOAT_DTYPES = ("BF16", "F16", "F32")
SCALAR: tuple[int, ...] = ()
# ModelOpt 0.47 name-sentinel defect (deployment.md §5.6): strip these suffixes from quantized-layer keys
_SENTINELS = (".\x00backbone.pt_name_sentinel", ".\x00modelopt_name_sentinel")


@dataclass(frozen=True)
class Problem:
    kind: str  # "missing" | "unexpected" | "shape" | "dtype"
    name: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class QuantInfo:
    """The quantization description, normalised from hf_quant_config.json or config.json's quantization_config."""

    algo: str | None  # "FP8", "NVFP4", "MIXED_PRECISION" or None
    kv_cache_algo: str | None
    layers: dict[str, str]  # module prefix -> algo (MIXED_PRECISION)
    exclude: tuple[str, ...]  # fnmatch patterns of unquantized modules (single-format)

    def module_algo(self, module: str) -> str | None:
        """The format of linear `module` (e.g. `backbone.layers.1.mixer.experts.3.up_proj`), None if unquantized."""
        if module.startswith("mtp.") or self.algo is None:
            return None
        if self.algo == "MIXED_PRECISION":
            for prefix, algo in self.layers.items():
                if module == prefix or module.startswith(prefix + "."):
                    return algo
            return None
        for pat in self.exclude:
            if fnmatch.fnmatchcase(module, pat) or module.startswith(pat + "."):
                return None
        return self.algo


def _strip_sentinel(key: str) -> str:
    # the sentinel may end the key ("lm_head.<S>") or precede a wildcard ("backbone.layers.0.<S>*")
    for sentinel in _SENTINELS:
        if sentinel in key:
            key = key.replace(sentinel[1:], "").removesuffix(".")
    return key


def quant_info(q: dict[str, Any] | None) -> QuantInfo | None:
    """Normalise `reader.quantization` (either ModelOpt file layout) to a `QuantInfo`; None if unquantized."""
    if not q:
        return None
    body = q.get("quantization", q) if isinstance(q.get("quantization"), dict) else q
    algo = body.get("quant_algo")
    algo = str(algo).upper() if algo else None
    kv = body.get("kv_cache_quant_algo")
    if kv is None and isinstance(body.get("kv_cache_scheme"), dict):
        scheme = body["kv_cache_scheme"]
        if scheme.get("num_bits") == 8 and scheme.get("type") == "float":
            kv = "FP8"
    layers: dict[str, str] = {}
    for key, v in (body.get("quantized_layers") or {}).items():
        a = v.get("quant_algo") if isinstance(v, dict) else v
        if a:
            layers[_strip_sentinel(str(key))] = str(a).upper()
    exclude = tuple(
        _strip_sentinel(str(x)) for x in (body.get("exclude_modules") or body.get("ignore") or [])
    )
    if algo is None and layers:
        algo = "MIXED_PRECISION"
    if algo is None and kv is None:
        return None
    return QuantInfo(algo, str(kv).upper() if kv else None, layers, exclude)


def _is_quantizable(name: str) -> bool:
    return name.endswith("_proj.weight") or name == "lm_head.weight"


def expected_checkpoint_tensors(
    reader: CheckpointReader,
) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """name -> (shape, allowed safetensors dtypes) for this checkpoint, including quantization tensors."""
    cfg = reader.config
    q = quant_info(reader.quantization)
    out: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {}
    spec: TensorSpec
    for name, spec in expected_tensors(cfg).items():
        algo = q.module_algo(name.removesuffix(".weight")) if q and _is_quantizable(name) else None
        if algo is None or len(spec.shape) != 2:
            out[name] = (spec.shape, FLOAT_DTYPES)
            continue
        rows, cols = spec.shape
        module = name.removesuffix(".weight")
        if algo == "NVFP4":
            out[name] = ((rows, cols // 2), ("U8",))
            out[f"{module}.weight_scale"] = ((rows, cols // NVFP4_BLOCK), ("F8_E4M3",))
            out[f"{module}.weight_scale_2"] = (SCALAR, ("F32",))
            out[f"{module}.input_scale"] = (SCALAR, ("F32",))
        elif algo == "FP8":
            out[name] = ((rows, cols), ("F8_E4M3",))
            out[f"{module}.weight_scale"] = (SCALAR, ("F32",))
            out[f"{module}.input_scale"] = (SCALAR, ("F32",))
        else:
            raise CheckpointError(
                f"quantization format {algo!r} of {module} is not supported; expected FP8 or NVFP4 "
                "(ModelOpt quant_algo)"
            )
    if q and q.kv_cache_algo == "FP8":
        for name in expected_tensors(cfg):
            if name.startswith("backbone.") and name.endswith((".k_proj.weight", ".v_proj.weight")):
                kind = "k" if ".k_proj." in name else "v"
                out[f"{name.removesuffix('.weight')}.{kind}_scale"] = (SCALAR, ("F32",))
    return out


def validate(reader: CheckpointReader) -> list[Problem]:
    """Every missing, unexpected, mis-shaped and wrongly typed tensor of the checkpoint (headers only)."""
    expected = expected_checkpoint_tensors(reader)
    problems: list[Problem] = []
    present = set(reader.names())
    for name, (shape, dtypes) in expected.items():
        if name not in present:
            problems.append(
                Problem("missing", name, f"missing tensor {name} (expected {_fmt(shape, dtypes)})")
            )
            continue
        got_shape, got_dtype = tuple(reader.shape(name)), reader.st_dtype(name)
        if got_shape != shape:
            problems.append(
                Problem(
                    "shape",
                    name,
                    f"{name}: shape {list(got_shape)}, expected {list(shape)} ({_fmt(shape, dtypes)})",
                )
            )
        if got_dtype not in dtypes:
            problems.append(
                Problem(
                    "dtype",
                    name,
                    f"{name}: dtype {_ST_NAMES.get(got_dtype, got_dtype)}, expected {_dt(dtypes)}",
                )
            )
    for name in reader.names():
        if name not in expected:
            problems.append(
                Problem(
                    "unexpected",
                    name,
                    f"unexpected tensor {name} {list(reader.shape(name))} (stored as {reader.source_name(name)!r})",
                )
            )
    return problems


def _dt(dtypes: tuple[str, ...]) -> str:
    return "/".join(_ST_NAMES.get(d, d) for d in dtypes)


def _fmt(shape: tuple[int, ...], dtypes: tuple[str, ...]) -> str:
    return f"{_dt(dtypes)} {list(shape)}"


_FIXES = {
    "missing": "the checkpoint is incomplete or its config.json describes a different model: re-download the "
    "missing shards or use the config.json that came with these weights",
    "unexpected": "the files hold tensors this config does not use: check hybrid_override_pattern / "
    "num_nextn_predict_layers / moe_latent_size in config.json, or remove the extra tensors",
    "shape": "the config.json dimensions do not match the weights: use the config.json that came with them",
    "dtype": "re-export the tensors in the listed dtypes (quantized checkpoints: check hf_quant_config.json "
    "matches how the weights were quantized)",
}


def format_problems(problems: list[Problem], path: object = "", max_per_kind: int = 8) -> str:
    """One readable message: counts per kind, the first names of each, and how to fix each kind."""
    lines = [f"checkpoint {path} has {len(problems)} problem(s):"]
    for kind in ("missing", "unexpected", "shape", "dtype"):
        group = [p for p in problems if p.kind == kind]
        if not group:
            continue
        title = {
            "missing": "missing",
            "unexpected": "unexpected",
            "shape": "wrong shape",
            "dtype": "wrong dtype",
        }
        lines.append(f"  {len(group)} {title[kind]}:")
        lines += [f"    - {p.message}" for p in group[:max_per_kind]]
        if len(group) > max_per_kind:
            lines.append(f"    ... and {len(group) - max_per_kind} more")
        fix = _FIXES[kind]
        if kind == "missing" and all(p.name.startswith("mtp.") for p in group):
            fix = (
                "the MTP block (mtp.*) is absent (HF transformers drops it on save_pretrained): copy the mtp.* "
                "tensors from the original checkpoint, or set num_nextn_predict_layers to 0 in config.json"
            )
        lines.append(f"    fix: {fix}")
    return "\n".join(lines)


def check_checkpoint(reader: CheckpointReader) -> None:
    """Raise one CheckpointError listing every problem (counts + names, truncated) and how to fix each kind."""
    problems = validate(reader)
    if problems:
        raise CheckpointError(format_problems(problems, reader.path))
