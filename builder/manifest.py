"""`build.json`: the engine directory's manifest, written last, and its verification.

An engine dir is complete exactly when `build.json` exists (the pipeline writes it last, inside the
staging dir, before the atomic rename). Every other file in the dir is listed with its SHA-256, so
`verify_engine_dir` detects a missing, extra or modified file.

Schema (format_version 1; every key always present, `null` where not applicable):

    {
      "format_version": 1,
      "kind": "trtllm-nemotron-engine",
      "created_utc": "2026-11-25T20:00:00Z",
      "target":  {"name": "b200", "description": str, "sm": 100 | null, "memory_gb": 192 | null,
                  "native_formats": [str], "default_recipe": str},
      "recipe":  {"name": "nvfp4-super", "kv_cache": "fp8" | null,
                  "weight_modes": {"nvfp4": "W4A4 ...", "fp8": ..., "bf16": ...}},
      "mtp":     {"max_draft_len": 3, "num_nextn_predict_layers": 1,
                  "mode": "MTP_EAGLE_ONE_MODEL" | "MTP" | null},
      "model":   {"source": "/abs/path", "family": "super-120b" | "nano-30b" | null,
                  "architecture": "NemotronHForCausalLM", "parameters": {"total": int, "active": int, ...}},
      "plan":    Plan.to_dict()  (builder.plan: sizes in bytes, fits, max_batch) | null (cpu),
      "trtllm":  {"yaml": "trtllm/llm_api.yaml", "moe_backend": str | null, "moe_backend_reason": str,
                  "llm_args_keys_source": {"repo", "path", "commit", "version"}} | null (cpu),
      "plugins": {"dir": "plugins/sm_100", "summary": <plugins.aot.compile_all result>} | null (cpu),
      "tools":   {"trtllm_nemotron": ver, "python": ver, "torch": ver | null, "safetensors": ...,
                  "triton": ..., "nvidia_modelopt": ..., "transformers": ..., "tensorrt_llm": ver | null},
      "inputs":  {"dir": "/abs/model", "files": {relpath: sha256}},
      "outputs": {"files": {relpath: sha256}},          (every file of the engine dir but build.json)
      "stages":  [{"name": str, "status": "done" | "skipped", "seconds": float, "detail": str}],
      "quantization": <quantize_checkpoint summary> | null (bf16),
      "accuracy": <accuracy report dict> | null (bf16: the checkpoint is a copy),
      "validation": {"status": "passed" | "skipped" | "failed", "reason": str, "output": str | null}
    }
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trtllm_nemotron.errors import BuildError
from trtllm_nemotron.fileio import atomic_write_text

FORMAT_VERSION = 1
KIND = "trtllm-nemotron-engine"
MANIFEST = "build.json"
REQUIRED_KEYS = (
    "format_version",
    "kind",
    "created_utc",
    "target",
    "recipe",
    "mtp",
    "model",
    "plan",
    "trtllm",
    "plugins",
    "tools",
    "inputs",
    "outputs",
    "stages",
    "quantization",
    "accuracy",
    "validation",
)
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_tree(root: str | Path, *, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """{posix relpath: sha256} of every regular file under `root` (hidden staging files skipped)."""
    root = Path(root)
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if (
            not p.is_file()
            or rel in exclude
            or any(part.startswith(".") for part in p.relative_to(root).parts)
        ):
            continue
        out[rel] = sha256_file(p)
    return out


def write_manifest(engine_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write `build.json` atomically (temp file + rename) into `engine_dir`."""
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BuildError(f"manifest is missing keys {missing}; this is a bug in builder.pipeline")
    path = Path(engine_dir) / MANIFEST
    return atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of an engine dir (or of a `build.json` path)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise BuildError(
            f"no {MANIFEST} at {path}: not a complete engine dir (the build writes it last); "
            "rebuild with `trtllm-nemotron build`"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BuildError(f"{path} is not valid JSON ({e}); rebuild the engine dir") from e
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise BuildError(f"{path} is not a trtllm-nemotron engine manifest (kind != {KIND!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise BuildError(
            f"{path} has format_version {data.get('format_version')!r}; this trtllm-nemotron reads "
            f"{FORMAT_VERSION}. Rebuild the engine dir with this version"
        )
    return data


def verify_engine_dir(path: str | Path) -> list[str]:
    """Problems with an engine dir (empty list = complete and untampered).

    Checks: the manifest reads and has every key; every listed output file exists with its SHA-256;
    no unlisted file exists; the layout for the target is present (checkpoint/config.json always,
    trtllm/llm_api.yaml and plugins/sm_<N>/ for GPU targets).
    """
    root = Path(path)
    try:
        m = read_manifest(root)
    except BuildError as e:
        return [str(e)]
    problems = [f"manifest key missing: {k}" for k in REQUIRED_KEYS if k not in m]
    listed: dict[str, str] = (m.get("outputs") or {}).get("files") or {}
    actual = hash_tree(root)
    for rel, digest in sorted(listed.items()):
        if rel not in actual:
            problems.append(f"missing file: {rel}")
        elif actual[rel] != digest:
            problems.append(f"hash mismatch: {rel} (manifest {digest[:12]}…, file {actual[rel][:12]}…)")
    for rel in sorted(set(actual) - set(listed)):
        problems.append(f"file not in manifest: {rel}")
    if not (root / "checkpoint" / "config.json").is_file():
        problems.append("layout: checkpoint/config.json missing")
    sm = (m.get("target") or {}).get("sm")
    if sm is not None:
        if not (root / "trtllm" / "llm_api.yaml").is_file():
            problems.append("layout: trtllm/llm_api.yaml missing (GPU target)")
        if not (root / "plugins" / f"sm_{sm}").is_dir():
            problems.append(f"layout: plugins/sm_{sm}/ missing (GPU target)")
    return problems
