"""Atomic file output shared by every stage that writes into a checkpoint or an engine dir.

A file is written to a temp file beside its destination and renamed over it, so a reader sees the old file or
the new one, never half of one. Temp files and dirs from `tempfile` are created 0600 / 0700; what we publish
gets the umask's ordinary modes instead, so a server running as another user (tritonserver's model process,
a TensorRT-LLM container) can read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(root: str | Path) -> None:
    """Give `root` (a file, or a dir and everything below it) the umask's ordinary modes."""
    root = Path(root)
    mask = _umask()
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file in the same dir, then rename). Raises OSError."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        publish_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
