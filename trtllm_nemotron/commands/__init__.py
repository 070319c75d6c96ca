"""Thin click commands: parse options, call one library function, turn NemotronError into exit status 1."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from trtllm_nemotron.errors import NemotronError

F = TypeVar("F", bound=Callable[..., Any])


def os_error_message(e: OSError) -> str:
    """'cannot write /x/y: Read-only file system (...)' for an OSError from reading or writing files."""
    where = " ".join(str(f) for f in (e.filename, e.filename2) if f)
    hint = {
        errno.EACCES: "check its permissions or choose another output path",
        errno.EPERM: "check its permissions or choose another output path",
        errno.EROFS: "the filesystem is read-only: choose another output path",
        errno.ENOSPC: "the disk is full: free space or choose another output path",
        errno.EBUSY: "it is in use or a mount point: choose another path",
    }.get(e.errno or 0, "")
    return f"{e.strerror or e}" + (f": {where}" if where else "") + (f"; {hint}" if hint else "")


def user_errors(fn: F) -> F:
    """Show library errors as `Error: <message>` with exit status 1 (click's convention)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NemotronError as e:
            raise click.ClickException(str(e)) from e
        except OSError as e:  # a read-only or full output dir, a missing file: say which, no traceback
            raise click.ClickException(os_error_message(e)) from e

    return wrapper  # type: ignore[return-value]
