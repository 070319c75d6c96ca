"""Lazy reader for HF-layout NemotronH checkpoints (sharded safetensors + config.json).

Design notes
- Lazy: every shard is opened with `safetensors.safe_open` (an mmap); `names()`, `shape()`, `dtype()`
  and `nbytes()` read only the headers, and `get(name)` materialises one tensor. Nothing ever loads the
  whole checkpoint, so a 247 GB Super checkpoint is inspected in seconds.
- Canonical names (spec nemotron_h.md §3.2): `backbone.` prefix, `backbone.embeddings.weight`, one 2-D tensor
  per routed expert. Checkpoint variants (§3.5) are normalised by the declarative table `RENAMES` below, and
  fused 3-D experts (`...mixer.experts.up_proj [E, I, X]`, `down_proj [E, X, I]`, stored with or without a
  `.weight` suffix; HF v5 `MergeModulelist(dim=0)` layout) are exposed as per-expert names, sliced lazily
  from the fused tensor. (transformers 5.23's `save_pretrained` itself writes per-expert `backbone.` keys.)
- Quantized (ModelOpt) checkpoints: `weight_scale`, `weight_scale_2`, `input_scale`, `k_scale`, `v_scale` are
  ordinary names; `reader.quantization` is `hf_quant_config.json` if present, else
  `config.json["quantization_config"]`, else None.
- Every failure to open (missing dir/config, bad index JSON, missing shard, truncated or corrupt shard,
  duplicate names after normalisation) is a `CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch

INDEX_FILE = "model.safetensors.index.json"
QUANT_FILE = "hf_quant_config.json"

# Name normalisation, applied in order to every stored key (spec §3.5). Each rule: (regex, replacement, reason).
RENAMES: tuple[tuple[str, str, str], ...] = (
    (r"^language_model\.", "", "multimodal (Omni/VL) checkpoints nest the LM under language_model."),
    (r"^model\.", "backbone.", "HF v5 in-memory naming (WeightRenaming backbone. <-> model.)"),
    (r"^backbone\.embedding\.weight$", "backbone.embeddings.weight", "older checkpoints (HF <= 5.4 rule)"),
)
_RENAME_RES = tuple((re.compile(p), r) for p, r, _ in RENAMES)

# Fused routed experts: `<prefix>.mixer.experts.{up,down}_proj[.weight|.weight_scale]` stored 3-D [E, ...];
# exposed as `<prefix>.mixer.experts.{e}.{up,down}_proj.<suffix>` 2-D [...].
_FUSED_EXPERTS = re.compile(
    r"^(?P<pre>.*\.mixer\.experts)\.(?P<proj>up_proj|down_proj)(?:\.(?P<suf>weight|weight_scale))?$"
)

# safetensors header dtype -> torch dtype name (resolved lazily so this module imports without torch)
ST_DTYPES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
}


class CheckpointConfigError(CheckpointError, ConfigError):
    """The checkpoint's config.json is missing or invalid (both a CheckpointError and a ConfigError)."""


def _decode_special_floats(obj: dict[str, Any]) -> Any:
    # transformers 5 writes non-finite floats as {"__float__": "Infinity"} (e.g. time_step_limit)
    if set(obj) == {"__float__"} and isinstance(obj["__float__"], str):
        return float(obj["__float__"])
    return obj


def read_config(path: str | Path) -> NemotronHConfig:
    """config.json -> NemotronHConfig; errors are `CheckpointConfigError` (a CheckpointError and a ConfigError)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CheckpointConfigError(
            f"no config.json at {path}; a HF checkpoint needs its config.json (copy it from the model repository)"
        )
    try:
        d = json.loads(path.read_text(), object_hook=_decode_special_floats)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointConfigError(f"{path} is not valid JSON ({e}); re-download or fix the file") from e
    try:
        return NemotronHConfig.from_dict(d)
    except ConfigError as e:
        raise CheckpointConfigError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:  # a field of the wrong JSON type
        raise CheckpointConfigError(f"{path}: invalid NemotronH config ({type(e).__name__}: {e})") from e


def normalize_name(key: str) -> str:
    """The canonical (`backbone.`) name of a stored key, per `RENAMES` (fused experts are handled separately)."""
    for pattern, repl in _RENAME_RES:
        key = pattern.sub(repl, key)
    return key


@dataclass(frozen=True)
class _Entry:
    file: Path
    key: str  # the key in the file
    shape: tuple[int, ...]  # canonical shape (per-expert shape for a fused slice)
    st_dtype: str  # safetensors dtype string, e.g. "BF16"
    expert: int | None = None  # index into the fused [E, ...] tensor


def _torch_dtype(st_dtype: str) -> torch.dtype:
    import torch

    name = ST_DTYPES.get(st_dtype)
    if name is None or not hasattr(torch, name):
        raise CheckpointError(f"tensor dtype {st_dtype} is not supported by this torch build")
    return getattr(torch, name)


class CheckpointReader:
    """A lazily opened checkpoint directory. Use as a context manager or call `close()`."""

    def __init__(self, path: str | Path):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(
                f"checkpoint directory {self.path} does not exist or is not a directory; pass the HF checkpoint "
                "directory (the one holding config.json and *.safetensors)"
            )
        if not (self.path / "config.json").is_file():
            raise CheckpointConfigError(
                f"{self.path} has no config.json; a HF checkpoint directory needs its config.json "
                "(copy it from the model repository)"
            )
        self.config: NemotronHConfig = read_config(self.path / "config.json")
        self.quantization: dict[str, Any] | None = self._read_quantization()

        key_files = self._key_files()  # {stored key: shard path}
        self.files: list[Path] = sorted(set(key_files.values()))
        self._handles: dict[Path, Any] = {}
        by_file: dict[Path, list[str]] = {}
        for key, f in key_files.items():
            by_file.setdefault(f, []).append(key)
        self._entries: dict[str, _Entry] = {}
        sources: dict[str, list[str]] = {}
        for f in self.files:
            try:
                h = safe_open(str(f), framework="pt")
            except (SafetensorError, OSError) as e:
                self.close()
                raise CheckpointError(
                    f"shard {f} is truncated or corrupt ({e}); re-download or re-write this file "
                    f"(expected a complete safetensors file, got {f.stat().st_size} bytes)"
                ) from e
            self._handles[f] = h
            present = set(h.keys())
            absent = [k for k in by_file[f] if k not in present]
            if absent:
                self.close()
                raise CheckpointError(
                    f"{INDEX_FILE} maps {len(absent)} tensors to {f.name}, but that file does not hold them "
                    f"(e.g. {absent[:3]}); the index and the shards are out of sync: re-download them together"
                )
            for key in by_file[f]:
                sl = h.get_slice(key)
                shape, st_dtype = tuple(sl.get_shape()), sl.get_dtype()
                for name, entry in self._expand(f, key, shape, st_dtype):
                    self._entries.setdefault(name, entry)
                    sources.setdefault(name, []).append(f"{f.name}:{key}")
        dups = {n: s for n, s in sources.items() if len(s) > 1}
        if dups:
            self.close()
            shown = "; ".join(f"{n} <- {s}" for n, s in list(dups.items())[:5])
            raise CheckpointError(
                f"{len(dups)} tensor names occur more than once after name normalisation ({shown}"
                f"{' ...' if len(dups) > 5 else ''}); the checkpoint mixes naming variants "
                "(model./backbone./language_model. or fused/per-expert experts): keep one copy of each tensor"
            )

    # ---- opening ----
    def _read_quantization(self) -> dict[str, Any] | None:
        qf = self.path / QUANT_FILE
        if qf.is_file():
            try:
                q = json.loads(qf.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{qf} is not valid JSON ({e}); re-export or fix it") from e
            if not isinstance(q, dict):
                raise CheckpointError(f"{qf} must hold a JSON object, got {type(q).__name__}")
            return q
        raw = self.config.raw or {}
        q = raw.get("quantization_config")
        return q if isinstance(q, dict) else None

    def _key_files(self) -> dict[str, Path]:
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                data = json.loads(index.read_text())
                weight_map = data["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError(f"weight_map is a {type(weight_map).__name__}, expected an object")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"{index} is not a valid safetensors index ({type(e).__name__}: {e}); expected JSON "
                    '{"metadata": {...}, "weight_map": {tensor name: shard file}}; re-download or delete it'
                ) from e
            out: dict[str, Path] = {}
            missing: set[str] = set()
            for key, fname in weight_map.items():
                f = self.path / str(fname)
                if not f.is_file():
                    missing.add(str(fname))
                out[key] = f
            if missing:
                raise CheckpointError(
                    f"{index} refers to {len(missing)} shard file(s) that do not exist in {self.path}: "
                    f"{sorted(missing)[:5]}; download the missing shards"
                )
            return out
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(
                f"{self.path} holds no *.safetensors files and no {INDEX_FILE}; "
                "expected a HF checkpoint directory with the weights"
            )
        from safetensors import SafetensorError, safe_open

        out = {}
        dup: list[str] = []
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    keys = list(h.keys())
            except (SafetensorError, OSError) as e:
                raise CheckpointError(
                    f"shard {f} is truncated or corrupt ({e}); re-download or re-write this file"
                ) from e
            for k in keys:
                if k in out:
                    dup.append(k)
                out[k] = f
        if dup:
            raise CheckpointError(
                f"{len(dup)} tensor keys occur in more than one shard (e.g. {dup[:3]}) and there is no "
                f"{INDEX_FILE} to say which one is current; remove the stale shard"
            )
        return out

    @staticmethod
    def _expand(f: Path, key: str, shape: tuple[int, ...], st_dtype: str) -> list[tuple[str, _Entry]]:
        name = normalize_name(key)
        m = _FUSED_EXPERTS.match(name)
        if m and len(shape) == 3:
            suf = m["suf"] or "weight"
            return [
                (f"{m['pre']}.{e}.{m['proj']}.{suf}", _Entry(f, key, shape[1:], st_dtype, e))
                for e in range(shape[0])
            ]
        return [(name, _Entry(f, key, shape, st_dtype))]

    # ---- queries ----
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in checkpoint {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return _torch_dtype(self._entry(name).st_dtype)

    def st_dtype(self, name: str) -> str:
        """The safetensors dtype string (`BF16`, `F8_E4M3`, ...); needs no torch."""
        return self._entry(name).st_dtype

    def numel(self, name: str) -> int:
        return math.prod(self._entry(name).shape)

    def nbytes(self, name: str) -> int:
        return self.numel(name) * _torch_dtype(self._entry(name).st_dtype).itemsize

    def source_name(self, name: str) -> str:
        """The key this tensor is stored under in its file (for a fused expert: the fused key)."""
        return self._entry(name).key

    def source_file(self, name: str) -> Path:
        return self._entry(name).file

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor (a per-expert slice of a fused tensor reads only that expert)."""
        e = self._entry(name)
        h = self._handles.get(e.file)
        if h is None:
            raise CheckpointError(f"checkpoint {self.path} is closed; open it again to read {name!r}")
        t = h.get_tensor(e.key) if e.expert is None else h.get_slice(e.key)[e.expert]
        return t if dtype is None else t.to(dtype)

    def size_bytes(self) -> int:
        """Size of the shard files on disk."""
        return sum(f.stat().st_size for f in self.files)

    # ---- lifetime ----
    def close(self) -> None:
        for h in self._handles.values():
            h.__exit__(None, None, None)
        self._handles = {}

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CheckpointReader({str(self.path)!r}, {len(self._entries)} tensors in {len(self.files)} files)"
        )


def open_checkpoint(path: str | Path) -> CheckpointReader:
    """Open a HF checkpoint directory lazily (index + shards, or single/multiple `*.safetensors`)."""
    return CheckpointReader(path)
