"""`trtllm-nemotron`: the command-line entry point.

Subcommands are imported lazily (click's LazyGroup pattern), so `trtllm-nemotron --help` and
`trtllm-nemotron CMD --help` never import torch: each command module imports heavy libraries inside its
function body. Library errors (`NemotronError`) become `click.ClickException` (exit status 1).
"""

from __future__ import annotations

import importlib
import logging

import click

# name -> "module:attribute"; each module holds one thin click command
SUBCOMMANDS: dict[str, str] = {
    "inspect": "trtllm_nemotron.commands.inspect_cmd:inspect",
    "make-tiny": "trtllm_nemotron.commands.make_tiny:make_tiny",
    "quantize": "trtllm_nemotron.commands.quantize:quantize",
    "accuracy": "trtllm_nemotron.commands.accuracy:accuracy",
    "compile-plugins": "trtllm_nemotron.commands.compile_plugins:compile_plugins",
    "plan": "trtllm_nemotron.commands.plan:plan",
    "build": "trtllm_nemotron.commands.build:build",
    "generate": "trtllm_nemotron.commands.generate:generate",
    "package": "trtllm_nemotron.commands.package:package",
    "serve": "trtllm_nemotron.commands.serve:serve",
    "bench-serve": "trtllm_nemotron.commands.bench_serve:bench_serve",
    "train-tiny": "trtllm_nemotron.commands.train_tiny:train_tiny",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (or listed for help)."""

    def __init__(self, *args, lazy_subcommands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands:
            module_name, attr = self.lazy_subcommands[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup, lazy_subcommands=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="trtllm-nemotron")
@click.option("-v", "--verbose", is_flag=True, help="Log stage details, backend choices and timings.")
def main(verbose: bool) -> None:
    """Nemotron 3 Super deployment: inspect -> quantize -> build -> package -> serve -> generate."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
