"""Thin click commands: parse options, call one library function, turn NemotronError into exit status 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from trtllm_nemotron.errors import NemotronError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Show library errors as `Error: <message>` with exit status 1 (click's convention)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NemotronError as e:
            raise click.ClickException(str(e)) from e

    return wrapper  # type: ignore[return-value]
