"""`trtllm-nemotron train-tiny`: retrain the embedded default model on this machine's Python stdlib (CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors


@click.command("train-tiny")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Checkpoint directory (default: the package's assets/nemotron-tiny, i.e. the shipped model).",
)
@click.option("--steps", type=int, default=None, help="Optimizer steps (default: the recipe's fixed count).")
@click.option("--seed", type=int, default=None, help="Seed for the init and the data windows (default 0).")
@click.option("--threads", type=int, default=None, help="torch threads (default 2).")
@click.option("--batch-size", type=int, default=None, help="Windows per step (default 8).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@user_errors
def train_tiny(
    out: Path | None,
    steps: int | None,
    seed: int | None,
    threads: int | None,
    batch_size: int | None,
    no_progress: bool,
) -> None:
    """Train the embedded 5.5M-parameter Nemotron-3-Super-architecture model (fixed seed, CPU, 15-35 min).

    Data: the running interpreter's standard library (.py files, split by path hash). Writes a HF checkpoint
    (bf16), the tokenizer, training_log.json and loss.png, replacing OUT atomically.
    """
    # idle OpenMP workers must sleep, not spin: on a shared 2-core machine spinning costs 3-5x per step
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import dataclasses

    from trtllm_nemotron.train.train import DEFAULT_OUT, TrainConfig, summarize
    from trtllm_nemotron.train.train import train_tiny as run

    tc = TrainConfig()
    overrides = {"steps": steps, "seed": seed, "threads": threads, "batch_size": batch_size}
    tc = dataclasses.replace(tc, **{k: v for k, v in overrides.items() if v is not None})
    target = out or DEFAULT_OUT
    log = run(target, tc, progress=not no_progress)
    click.echo(summarize(log))
    click.echo(f"wrote {target}")
