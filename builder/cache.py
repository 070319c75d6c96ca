"""A content-addressed cache for the two expensive, target-independent build products.

Quantizing a checkpoint does not depend on the target, and compiling plugin kernels depends only on the
SM, the model dims and the plugin sources; so building the same model for b200 then h100 (or building
twice) should not redo them. Each entry is keyed by a SHA-256 over everything that determines it
(`quantize_key`, `plugins_key`):

    quantized checkpoint   the input files' SHA-256s, the recipe, the calibration settings, the kernel mode
                           ($TRTLLM_NEMOTRON_KERNELS), the torch / triton / tokenizers / safetensors versions,
                           and every source file of trtllm_nemotron/ and plugins/ (calibration runs the model,
                           which calls the plugin ops)
    plugin kernels         the SM, the model config, the triton / torch versions, and every source file of
                           plugins/

Sources are hashed as (path relative to the package root, content) pairs, so a code change, a renamed or
moved file, or another torch is a cache miss, never a stale hit. Entries are written atomically (temp dir,
then rename: `fileio.atomic_dir`) under `fileio.cache_dir()/<kind>/<key>/` (`<kind>` is `quantized` or
`plugins`; each entry holds `data/`, the product, and `meta.json`, what the stage returned). Only small
inputs are cached (the real Super checkpoint is ~80-240 GB: copying it into a cache would cost more than it
saves). `TRTLLM_NEMOTRON_NO_CACHE=1` (or `build --no-cache`) turns the cache off; deleting the directory
clears it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from plugins._dispatch import ENV_VAR as KERNELS_ENV
from trtllm_nemotron.fileio import atomic_dir, cache_dir, stale_siblings
from trtllm_nemotron.locking import path_lock

MAX_CACHED_BYTES = 1 << 30  # inputs above 1 GiB are never cached
ROOT = Path(__file__).resolve().parents[1]  # holds trtllm_nemotron/ and plugins/ (repo or site-packages)
SOURCE_SUFFIXES = frozenset({".py", ".c", ".cc", ".cpp", ".h", ".hpp", ".cu", ".cuh", ".jinja"})


def enabled() -> bool:
    return os.environ.get("TRTLLM_NEMOTRON_NO_CACHE", "") not in ("1", "true", "yes")


def source_hash(*paths: str | Path) -> str:
    """SHA-256 over (relative path, content) of every source file (`SOURCE_SUFFIXES`) under `paths`.

    A dir's files are named relative to the dir's parent (`plugins/aot.py`), a lone file by its name.
    """
    h = hashlib.sha256()
    for d in map(Path, paths):
        files = [d] if d.is_file() else sorted(p for p in d.rglob("*") if p.suffix in SOURCE_SUFFIXES)
        for p in files:
            if "__pycache__" in p.parts or not p.is_file():
                continue
            rel = p.relative_to(d.parent).as_posix()
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _versions(*dists: str) -> dict[str, str | None]:
    """Installed versions (torch: the imported module's, which is what runs)."""
    out: dict[str, str | None] = {}
    for d in dists:
        if d == "torch":
            import torch

            out[d] = str(torch.__version__)
            continue
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def quantize_key(inputs: dict[str, str], recipe: str, calib: dict[str, Any], *, root: Path = ROOT) -> str:
    """The `quantized` entry's key: see the module docstring. `root` holds trtllm_nemotron/ and plugins/."""
    return make_key(
        inputs=inputs,
        recipe=recipe,
        calib=calib,
        kernels=os.environ.get(KERNELS_ENV, ""),
        versions=_versions("torch", "triton", "tokenizers", "safetensors"),
        src=source_hash(root / "trtllm_nemotron", root / "plugins"),
    )


def plugins_key(sm: int | None, config: dict[str, Any], *, root: Path = ROOT) -> str:
    """The `plugins` entry's key: see the module docstring."""
    return make_key(
        sm=sm, config=config, versions=_versions("triton", "torch"), src=source_hash(root / "plugins")
    )


def make_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_dir(kind: str, key: str, dest: Path, produce: Callable[[Path], Any]) -> tuple[Any, bool]:
    """Fill `dest` (must not exist) from cache entry `kind/key`, producing it with `produce(dest)` on a miss.

    Returns (what `produce` returned, JSON round-tripped, hit?).
    """
    entry = cache_dir() / kind / key
    with contextlib.ExitStack() as held:
        if enabled():  # a concurrent build of the same entry waits here, then hits
            with contextlib.suppress(OSError):  # a read-only cache dir: no lock, no entry
                held.enter_context(path_lock(entry, wait=True))
                for stale in stale_siblings(entry):  # left by a killed writer
                    shutil.rmtree(stale, ignore_errors=True)
        if enabled() and (entry / "meta.json").is_file() and (entry / "data").is_dir():
            shutil.copytree(entry / "data", dest)
            return json.loads((entry / "meta.json").read_text())["result"], True
        result = json.loads(json.dumps(produce(dest), default=str))
        if enabled():
            try:
                with atomic_dir(entry, replace=entry.exists()) as tmp:  # an existing entry here is incomplete
                    shutil.copytree(dest, tmp / "data")
                    (tmp / "meta.json").write_text(json.dumps({"result": result}))
            except OSError:  # another build filled it first, or the cache dir is read-only: not an error
                pass
    return result, False
