"""`trtllm-nemotron inspect PATH`: architecture, parameter counts, dtypes and every problem of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors
from trtllm_nemotron.errors import NemotronError


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors
def inspect(path: Path, as_json: bool) -> None:
    """Validate a HF checkpoint dir (or a lone config.json, or an engine dir) and summarise it.

    Exits non-zero when the checkpoint has problems (missing, unexpected, mis-shaped or mistyped tensors)
    or cannot be read.
    """
    from trtllm_nemotron.checkpoint.inspect import format_report, inspect_path

    try:
        report = inspect_path(path)
    except NemotronError as e:
        if not as_json:
            raise
        click.echo(json.dumps({"path": str(path), "error": str(e), "problems": [str(e)]}, indent=2))
        raise click.exceptions.Exit(1) from e
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_report(report))
    if report["problems"]:
        if not as_json:
            click.echo(f"Error: {len(report['problems'])} problem(s) found in {path}", err=True)
        raise click.exceptions.Exit(1)
