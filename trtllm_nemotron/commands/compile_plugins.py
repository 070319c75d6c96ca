"""`trtllm-nemotron compile-plugins`: AOT-compile every plugin kernel for the given SMs (no GPU needed)."""

from __future__ import annotations

import click

from trtllm_nemotron.commands import user_errors


@click.command("compile-plugins")
@click.option(
    "--sm",
    "sms",
    type=int,
    multiple=True,
    default=(100, 90),
    show_default=True,
    help="Target SM (repeatable), e.g. --sm 100 --sm 90.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    required=True,
    help="Output directory; writes <out>/sm_<N>/ (PTX, cubin, index.json).",
)
@click.option(
    "--config",
    "config",
    default="super-120b",
    show_default=True,
    help="A preset name (super-120b, nano-30b, tiny) or a config.json path: its shapes fix the constexprs.",
)
@user_errors
def compile_plugins(sms: tuple[int, ...], out_dir: str, config: str) -> None:
    """Compile the Triton-lang plugin kernels ahead of time (PTX + cubin per SM) and write a JSON index."""
    from plugins.aot import compile_all
    from trtllm_nemotron.config import load_config

    index = compile_all(out_dir, tuple(sms), config=load_config(config))
    for key, ix in index.items():
        click.echo(
            f"{out_dir}/{key}: {len(ix['kernels'])} kernels ({ix['kernels'][0]['target']}, triton {ix['triton']})"
        )
