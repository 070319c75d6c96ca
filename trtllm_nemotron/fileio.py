"""File output and the cache directory, shared by every stage that writes a checkpoint, an engine dir, a model
repository or a cache entry.

- `atomic_write_text(path, text)`: a temp file beside `path`, renamed over it, so a reader sees the old file or
  the new one, never half of one.
- `atomic_dir(target)`: a context manager yielding a fresh temp dir beside `target`; on success the dir is
  published and renamed to `target` (an existing `target` is moved aside first and deleted after, and put back
  if the rename fails); on any failure the temp dir is removed and `target` is left as it was.
- `replace_dir(src, target)`: that final step on its own, for a staging dir that outlives one process
  (`build --resume`).
- `cache_dir()`: the one cache root (`$TRTLLM_NEMOTRON_CACHE_DIR`), see its docstring.

Temp files and dirs from `tempfile` are created 0600 / 0700; what we publish gets the umask's ordinary modes
instead, so a server running as another user (tritonserver's model process, a TensorRT-LLM container) can read
it. Temp and set-aside dirs are named `.<target>.tmp-<pid>-<random>` / `.<target>.old-<pid>-<random>`
(`TEMP_MARK`, `OLD_MARK`), so what a killed process left behind is recognisable (`stale_siblings`).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "TRTLLM_NEMOTRON_CACHE_DIR"
_DEPRECATED_CACHE_ENV = "TRTLLM_NEMOTRON_CACHE"  # the builder's old name; honoured with a FutureWarning
TEMP_MARK, OLD_MARK = ".tmp-", ".old-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(root: str | Path) -> None:
    """Give `root` (a file, or a dir and everything below it) the umask's ordinary modes (executables and dirs
    0777 & ~umask, other files 0666 & ~umask). Symlinks are left alone."""
    root = Path(root)
    mask = _umask()
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o111
        p.chmod((0o777 if executable else 0o666) & ~mask)


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


def _sibling(target: Path, mark: str) -> Path:
    return target.parent / f".{target.name}{mark}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def replace_dir(src: str | Path, target: str | Path, *, replace: bool = True) -> Path:
    """Rename the finished dir `src` to `target` (same filesystem), publishing its permissions first.

    With `replace`, an existing `target` is moved aside, then deleted once `src` is in place (and put back if
    that rename fails). Without it, an existing `target` raises FileExistsError (e.g. a cache entry another
    process wrote first) and `src` is left for the caller. Returns `target`.
    """
    src, target = Path(src), Path(target)
    publish_permissions(src)
    if not replace:
        if target.exists():
            raise FileExistsError(errno.EEXIST, "already exists", str(target))
        try:
            os.rename(src, target)
        except OSError as e:  # lost a race to another writer
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, "already exists", str(target)) from e
            raise
        return target
    old = None
    if target.exists():
        old = _sibling(target, OLD_MARK)
        os.replace(target, old)
    try:
        os.replace(src, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)  # put the previous one back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextmanager
def atomic_dir(target: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temp dir beside `target` to fill; on a clean exit it becomes `target` (`replace_dir`).

    Any exception inside the block (or from the final rename) removes the temp dir and leaves `target` as it
    was. `replace=False` raises FileExistsError at the end when `target` exists by then (the temp dir is
    removed). The parent of `target` is created if needed.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, TEMP_MARK)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def stale_siblings(target: str | Path) -> list[Path]:
    """Temp / set-aside dirs of `target` (`atomic_dir`, `replace_dir`) whose writer process is gone."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    out = []
    for mark in (TEMP_MARK, OLD_MARK):
        for p in target.parent.glob(f".{target.name}{mark}*"):
            pid = p.name[len(target.name) + 1 + len(mark) :].split("-", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                out.append(p)
    return sorted(out)


def cache_dir() -> Path:
    """The root of every cache this package keeps (the build cache, the native CPU step, tritonserver's
    backend dir): `$TRTLLM_NEMOTRON_CACHE_DIR`, else `$XDG_CACHE_HOME/trtllm-nemotron`, else
    `~/.cache/trtllm-nemotron`; when that cannot be created or written (no home, a read-only home: a server
    account), a per-user dir under the temp dir. `$TRTLLM_NEMOTRON_CACHE`, the builder's former name, still
    works with a FutureWarning. The dir is not created when the variable names it.
    """
    root = os.environ.get(CACHE_ENV)
    if not root and os.environ.get(_DEPRECATED_CACHE_ENV):
        root = os.environ[_DEPRECATED_CACHE_ENV]
        warnings.warn(
            f"${_DEPRECATED_CACHE_ENV} is deprecated; set ${CACHE_ENV} instead", FutureWarning, stacklevel=2
        )
    if root:
        return Path(root)
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trtllm-nemotron"
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except (OSError, RuntimeError):
        pass
    return Path(tempfile.gettempdir()) / f"trtllm-nemotron-{os.getuid()}"
