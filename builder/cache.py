"""A content-addressed cache for the two expensive, target-independent build products.

Quantizing a checkpoint does not depend on the target, and compiling plugin kernels depends only on the
SM, the model dims and the plugin sources; so building the same model for b200 then h100 (or building
twice) should not redo them. Each entry is keyed by a SHA-256 over everything that determines it:

    quantized checkpoint   input file hashes, recipe, calibration settings, and the source of
                           trtllm_nemotron.{quant, checkpoint, model, config}
    plugin kernels         SM, the model config, and the source of plugins/ (+ the triton version)

so a code change is a cache miss, never a stale hit. Entries are written atomically (temp dir, then
rename: `fileio.atomic_dir`) under `fileio.cache_dir()/<kind>/<key>/`. Only small inputs are cached (the real
Super checkpoint is ~80-240 GB: copying it into a cache would cost more than it saves).
`TRTLLM_NEMOTRON_NO_CACHE=1` (or `build --no-cache`) turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtllm_nemotron.fileio import atomic_dir, cache_dir

MAX_CACHED_BYTES = 1 << 30  # inputs above 1 GiB are never cached


def enabled() -> bool:
    return os.environ.get("TRTLLM_NEMOTRON_NO_CACHE", "") not in ("1", "true", "yes")


def source_hash(*dirs: str | Path) -> str:
    """SHA-256 over the (relative path, content) of every .py file under `dirs`."""
    h = hashlib.sha256()
    for d in dirs:
        d = Path(d)
        files = [d] if d.is_file() else sorted(d.rglob("*.py"))
        for p in files:
            if "__pycache__" in p.parts:
                continue
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def make_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_dir(kind: str, key: str, dest: Path, produce: Callable[[Path], Any]) -> tuple[Any, bool]:
    """Fill `dest` (must not exist) from cache entry `kind/key`, producing it with `produce(dest)` on a miss.

    Returns (what `produce` returned, JSON round-tripped, hit?).
    """
    entry = cache_dir() / kind / key
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
