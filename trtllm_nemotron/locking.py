"""Advisory locks on output paths, so two processes never write one engine dir, checkpoint or cache entry.

`path_lock(target)` holds an exclusive `flock` on `<parent>/.<name>.lock` for the duration of a `with` block.
The kernel drops it when the holder dies (SIGKILL included), so a killed build never blocks the next one; the
lock file is removed on release (and re-checked after locking, so a file unlinked by a releasing holder is not
mistaken for the live lock). The holder's pid and command are written into it to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockHeld(Exception):
    """Another live process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.path, self.holder = path, holder


def lock_file(target: str | Path) -> Path:
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


@contextmanager
def path_lock(target: str | Path, *, wait: bool = False) -> Iterator[Path]:
    """Hold the lock of `target` (see the module docstring); yields the lock file's path.

    `wait=False` raises LockHeld at once when another process holds it; `wait=True` blocks until it is free.
    The parent dir of `target` is created if needed.
    """
    path = lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(path, holder) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its previous holder had just removed: take the current one
        time.sleep(0.01)
    try:
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(
            fd,
            f"pid {os.getpid()} ({' '.join(Path(a).name for a in sys.argv[:2])}, since {started})".encode(),
        )
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
