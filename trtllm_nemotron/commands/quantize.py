"""`trtllm-nemotron quantize SRC OUT --recipe R`: a thin wrapper over `quant.quantize_checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors


def _print_recipes() -> None:
    from trtllm_nemotron.quant.recipes import RECIPES

    for r in RECIPES.values():
        click.echo(f"{r.name:<12} kv_cache={r.kv_cache or '-':<4} {r.description}")


@click.command("quantize")
@click.argument("src", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", required=False, type=click.Path(path_type=Path))
@click.option(
    "--recipe",
    default="nvfp4-super",
    show_default=True,
    help="Quantization recipe (see --list-recipes): fp8, nvfp4, nvfp4-super, bf16.",
)
@click.option("--list-recipes", is_flag=True, help="List the recipes and exit.")
@click.option(
    "--calib-text",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="UTF-8 text file for calibration (default: built-in text).",
)
@click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Number of calibration windows.",
)
@click.option(
    "--calib-seq-len",
    type=click.IntRange(min=2),
    default=128,
    show_default=True,
    help="Tokens per calibration window.",
)
@click.option(
    "--max-shard-mb",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Output shard size cap (also bounds the writer's memory).",
)
@click.option(
    "--accuracy/--no-accuracy",
    default=True,
    show_default=True,
    help="Measure KL / top-1 / perplexity against SRC after writing (loads both models).",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr."
)
@click.option(
    "--device",
    default=None,
    help="Where calibration and quantization run: cpu, cuda, cuda:N (default: cuda when available). "
    "Layer-streamed: the device holds about two layers at a time.",
)
@user_errors
def quantize(
    src: Path | None,
    out: Path | None,
    recipe: str,
    list_recipes: bool,
    calib_text: Path | None,
    calib_samples: int,
    calib_seq_len: int,
    max_shard_mb: int,
    accuracy: bool,
    progress: bool,
    device: str | None,
) -> None:
    """Quantize a BF16 HF checkpoint SRC into OUT in NVIDIA ModelOpt's HF format.

    Streams layer by layer (calibration included), writes hf_quant_config.json and
    config.json["quantization_config"], and replaces OUT atomically.
    """
    if list_recipes:
        _print_recipes()
        return
    if src is None or out is None:
        raise click.UsageError("SRC and OUT are required (or pass --list-recipes)")
    from trtllm_nemotron.errors import QuantError
    from trtllm_nemotron.locking import LockHeld, path_lock
    from trtllm_nemotron.quant import quantize_checkpoint
    from trtllm_nemotron.quant.recipes import get_recipe

    get_recipe(recipe)  # unknown recipe: fail before anything is read
    try:
        with path_lock(out):
            summary = quantize_checkpoint(
                src,
                out,
                recipe=recipe,
                calib_text=calib_text,
                calib_samples=calib_samples,
                calib_seq_len=calib_seq_len,
                progress=progress,
                accuracy=accuracy,
                max_shard_bytes=max_shard_mb * 2**20,
                device=device,
            )
    except LockHeld as e:
        raise QuantError(
            f"another process is writing {out} ({e.holder}); wait for it or choose another OUT"
        ) from None
    click.echo(json.dumps(summary, indent=2))
