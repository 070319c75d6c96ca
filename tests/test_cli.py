"""CLI conventions: every subcommand's --help works and never imports torch (lazy subcommands)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from trtllm_nemotron.cli import SUBCOMMANDS, main

_PROBE = """
import sys
from click.testing import CliRunner
from trtllm_nemotron.cli import main
r = CliRunner().invoke(main, {args!r})
assert r.exit_code == 0, r.output
heavy = [m for m in ("torch", "triton", "tensorrt", "transformers", "tritonclient") if m in sys.modules]
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("args", [["--help"]] + [[name, "--help"] for name in sorted(SUBCOMMANDS)])
def test_help_never_imports_torch(args):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(args=args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout, f"{args} imported heavy modules: {out.stdout}"


def test_every_subcommand_listed():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in r.output


def test_unknown_command_is_usage_error():
    r = CliRunner().invoke(main, ["no-such-command"])
    assert r.exit_code == 2
