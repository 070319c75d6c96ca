"""`trtllm-nemotron generate`: stdout carries only the completion, stats go to stderr, --json, errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from trtllm_nemotron.cli import main


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_local_generation_streams_text_to_stdout_and_stats_to_stderr(runner, tiny_dir, engine0):
    r = runner.invoke(
        main,
        [
            "generate",
            "--model",
            str(tiny_dir),
            "--max-tokens",
            "8",
            "--mtp",
            "0",
            "--ignore-eos",
            "def f(x):",
        ],
    )
    assert r.exit_code == 0, r.output
    expected = engine0.generate(
        "def f(x):",
        __import__("trtllm_nemotron.runtime", fromlist=["x"]).SamplingParams(max_tokens=8, ignore_eos=True),
    ).text
    assert r.stdout == expected
    assert "8 tokens" in r.stderr and "tok/s" in r.stderr and "TTFT" in r.stderr


def test_json_output_with_mtp(runner, tiny_dir):
    r = runner.invoke(
        main,
        [
            "generate",
            "--model",
            str(tiny_dir),
            "--max-tokens",
            "6",
            "--mtp",
            "2",
            "--json",
            "--temperature",
            "0.8",
            "--seed",
            "3",
            "--ignore-eos",
            "x = [",
        ],
    )
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    for k in ("text", "num_tokens", "tokens_per_s", "ttft_s", "acceptance_rate", "acceptance_length"):
        assert k in obj
    assert obj["num_tokens"] == 6 and obj["acceptance_length"] >= 1.0 and 0.0 <= obj["acceptance_rate"] <= 1.0
    r0 = runner.invoke(
        main, ["generate", "--model", str(tiny_dir), "--max-tokens", "2", "--mtp", "0", "--json", "a"]
    )
    assert json.loads(r0.stdout)["acceptance_length"] is None


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--top-p", "0"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--max-tokens", "-5"], "max_tokens"),
        (["--mtp", "40"], "mtp"),
    ],
)
def test_impossible_options_exit_1_with_a_clear_message(runner, tiny_dir, args, msg):
    r = runner.invoke(main, ["generate", "--model", str(tiny_dir), *args, "hello"])
    assert r.exit_code == 1 and msg in r.output


def test_model_and_url_are_exclusive_and_unreachable_server_is_an_error(runner, tiny_dir):
    r = runner.invoke(main, ["generate", "--model", str(tiny_dir), "--url", "localhost:1", "x"])
    assert r.exit_code == 2 and "exactly one" in r.output
    r = runner.invoke(main, ["generate", "--url", "localhost:1", "--protocol", "http", "--no-stream", "x"])
    assert r.exit_code == 1 and "Error" in r.output


@pytest.mark.parametrize("where", ["local", "url"])
def test_invalid_utf8_prompt_is_a_usage_error(tiny_dir, where):
    """argv keeps undecodable bytes as surrogates (it used to crash in the tokenizer / the client); stdin too."""
    import subprocess
    import sys

    target = ["--model", str(tiny_dir)] if where == "local" else ["--url", "127.0.0.1:1"]
    base = [sys.executable, "-m", "trtllm_nemotron", "generate", "--max-tokens", "2", *target]
    for args, stdin in (([b"\xff\xfeabc"], None), ([b"-"], b"ab\xffc")):
        r = subprocess.run([*map(str.encode, base), *args], input=stdin, capture_output=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert b"the prompt is not valid UTF-8" in r.stderr and b"Traceback" not in r.stderr


def test_empty_stop_string_means_none_as_on_the_server(runner, tiny_dir):
    r = runner.invoke(main, ["generate", "--model", str(tiny_dir), "--max-tokens", "2", "--stop", "", "hi"])
    assert r.exit_code == 0, r.output
