"""`trtllm-nemotron plan`: will a model + recipe fit a target, and what batch? (exit 1 if it does not fit)."""

from __future__ import annotations

import json

import click

from trtllm_nemotron.commands import user_errors

_TARGETS = ("b200", "h200", "h100", "cpu")


@click.command("plan")
@click.option(
    "--model",
    "model",
    default="super-120b",
    show_default=True,
    help="HF checkpoint dir, its config.json, or a preset name (super-120b, nano-30b, tiny).",
)
@click.option("--target", type=click.Choice(_TARGETS), default="b200", show_default=True)
@click.option("--recipe", default=None, help="Quantization recipe (default: the target's default recipe).")
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs (TP = EP = gpus).")
@click.option(
    "--max-seq-len", type=int, default=131072, show_default=True, help="Context length per sequence."
)
@click.option("--batch", type=int, default=1, show_default=True, help="Concurrent sequences.")
@click.option("--mtp", type=int, default=3, show_default=True, help="MTP draft length (0 = off).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@user_errors
def plan(
    model: str,
    target: str,
    recipe: str | None,
    gpus: int,
    max_seq_len: int,
    batch: int,
    mtp: int,
    as_json: bool,
) -> None:
    """Plan GPU memory: weights per recipe, KV per token, Mamba state per sequence, activations.

    Prints the breakdown and the largest batch that fits; an impossible plan exits with status 1.
    """
    from builder.plan import plan_memory
    from builder.targets import get_target
    from trtllm_nemotron.config import load_config
    from trtllm_nemotron.errors import BuildError

    t = get_target(target)
    cfg = load_config(model)
    if mtp and not cfg.num_nextn_predict_layers:
        click.echo(f"note: the model has no MTP layers; planning with --mtp 0 instead of {mtp}", err=True)
        mtp = 0
    p = plan_memory(
        cfg, t, recipe=recipe or t.default_recipe, gpus=gpus, max_seq_len=max_seq_len, batch=batch, mtp=mtp
    )
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=2))
    else:
        click.echo(p.explain())
    if not p.fits:
        raise BuildError(f"the plan does not fit on {gpus} x {t.name} (see the breakdown above)")
