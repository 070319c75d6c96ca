"""`trtllm-nemotron make-tiny OUT`: a random toy-size checkpoint of the full Super architecture + tokenizer."""

from __future__ import annotations

from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors
from trtllm_nemotron.config import PRESETS

# a random checkpoint is only useful at toy size; refuse to fill a disk with a 120B random model
MAX_PARAMETERS = 2 * 10**9


@click.command("make-tiny")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Random seed (the output is deterministic).")
@click.option(
    "--preset", "preset_name", default="tiny", show_default=True, type=click.Choice(sorted(PRESETS))
)
@user_errors
def make_tiny(out: Path, seed: int, preset_name: str) -> None:
    """Write a random HF checkpoint of a preset (default `tiny`) with a trained BPE tokenizer to OUT."""
    from trtllm_nemotron.checkpoint.tiny import make_tiny as _make_tiny
    from trtllm_nemotron.config import preset
    from trtllm_nemotron.errors import ConfigError

    cfg = preset(preset_name)
    total = cfg.parameter_counts()["total"]
    if total > MAX_PARAMETERS:
        raise ConfigError(
            f"preset {preset_name!r} has {total:,} parameters; make-tiny writes random checkpoints of at most "
            f"{MAX_PARAMETERS:,}. Use --preset tiny"
        )
    path = _make_tiny(out, seed=seed, config=cfg)
    click.echo(f"wrote {preset_name} checkpoint ({total:,} parameters, seed {seed}) to {path}")
