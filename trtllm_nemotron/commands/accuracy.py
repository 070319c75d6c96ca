"""`trtllm-nemotron accuracy QUANT_DIR --source SRC`: thin wrapper over `quant.accuracy.accuracy_report`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors


@click.command("accuracy")
@click.argument("quant_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--source",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The checkpoint QUANT_DIR was quantized from.",
)
@click.option(
    "--text",
    "texts",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Held-out text file(s) (default: built-in texts). Repeatable.",
)
@user_errors
def accuracy(quant_dir: Path, source: Path, texts: tuple[Path, ...]) -> None:
    """Compare a quantized checkpoint with its source: KL, top-1 agreement, perplexity change.

    The report is written to QUANT_DIR/accuracy.json and printed.
    """
    from trtllm_nemotron.quant.accuracy import accuracy_report

    report = accuracy_report(quant_dir, source, [p.read_text(encoding="utf-8") for p in texts] or None)
    click.echo(json.dumps(report, indent=2))
