"""Builds that survive each other and hard kills (issue 14): a lock on `--out`, no garbage after SIGKILL,
clean refusals for bad input, read-only and mount-point outputs. Real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.manifest import verify_engine_dir
from builder.pipeline import build_engine, staging_dir
from trtllm_nemotron.cli import main
from trtllm_nemotron.errors import NemotronError

CLI = [sys.executable, "-m", "trtllm_nemotron"]
pytestmark = pytest.mark.slow  # builds in subprocesses, killed with real signals (make test runs it)


def _hidden_garbage(root: Path) -> list[Path]:
    return [
        p for p in root.rglob(".*") if ".tmp" in p.name or ".old-" in p.name or p.name.endswith(".building")
    ]


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the build exited (rc={proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _start_build(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        CLI + ["build", "--model", str(src), "--out", str(out), "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TRTLLM_NEMOTRON_NO_CACHE": "1"},
    )


def test_concurrent_builds_into_one_out(tiny_ckpt, tmp_path):
    """The second build is refused at once, naming the first; the first completes untouched."""
    out = tmp_path / "engine"
    first = _start_build(tiny_ckpt, out, "--target", "b200", "--recipe", "nvfp4")
    _wait_for(lambda: (staging_dir(out) / ".state.json").is_file(), first, "the first build started")
    second = subprocess.run(
        CLI
        + [
            "build",
            "--model",
            str(tiny_ckpt),
            "--out",
            str(out),
            "--target",
            "cpu",
            "--recipe",
            "bf16",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1
    assert f"another build is writing {out}" in second.stderr and f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait(300) == 0, first.stdout.read()
    assert verify_engine_dir(out) == [] and not _hidden_garbage(tmp_path)
    assert not (tmp_path / ".engine.lock").exists()  # released and removed


@pytest.mark.parametrize(
    "stage, marker",
    [
        ("quantize", lambda st: list(st.glob(".checkpoint.tmp-*"))),  # the checkpoint writer's temp dir
        ("plugins", lambda st: list((st / "plugins").glob(".sm_100.tmp-*"))),  # the AOT compiler's temp dir
    ],
)
def test_sigkill_mid_stage_then_resume_gives_a_clean_engine(tiny_ckpt, tmp_path, stage, marker):
    """SIGKILL while a stage writes its temp dir; `--resume` removes it and finishes an engine `inspect` verifies."""
    out = tmp_path / "engine"
    args = ("--target", "b200", "--recipe", "nvfp4", "--calib-samples", "2")
    proc = _start_build(tiny_ckpt, out, *args)
    st = staging_dir(out)
    try:
        _wait_for(lambda: st.is_dir() and bool(marker(st)), proc, f"the {stage} stage wrote its temp dir")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert marker(st), "the kill left the temp dir (what --resume must not carry into the engine)"
    r = subprocess.run(
        CLI + ["build", "--model", str(tiny_ckpt), "--out", str(out), "--no-progress", "--resume", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TRTLLM_NEMOTRON_NO_CACHE": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert _hidden_garbage(tmp_path) == [], "temp dirs of the killed build survived"
    assert not [p for p in out.rglob(".*")], "hidden files were carried into the engine"
    r = subprocess.run(CLI + ["inspect", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert verify_engine_dir(out) == []


def test_sigkill_during_quantize_leaves_nothing_the_next_run_keeps(tiny_ckpt, tmp_path):
    out = tmp_path / "q"
    proc = subprocess.Popen(
        CLI
        + [
            "quantize",
            str(tiny_ckpt),
            str(out),
            "--recipe",
            "nvfp4",
            "--calib-samples",
            "2",
            "--no-accuracy",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: bool(list(tmp_path.glob(".q.tmp-*"))), proc, "quantize wrote its temp dir")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob(".q.tmp-*"))
    r = subprocess.run(
        CLI
        + [
            "quantize",
            str(tiny_ckpt),
            str(out),
            "--recipe",
            "nvfp4",
            "--calib-samples",
            "2",
            "--no-accuracy",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_bad_input_leaves_no_staging_dir_and_no_resume_hint(tiny_ckpt, tmp_path):
    """Bad input fails with no hidden `.OUT.building` and no `--resume` advice (it cannot fix input)."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "nemotron_h"}')
    with pytest.raises(NemotronError) as e:
        build_engine(bad, tmp_path / "engine", target="cpu", recipe="bf16", mtp=0, progress=False)
    assert "--resume" not in str(e.value)
    no_weights = tmp_path / "no_weights"  # a good config, no tensors: the inspect stage refuses it
    no_weights.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (no_weights / f).write_bytes((tiny_ckpt / f).read_bytes())
    with pytest.raises(NemotronError) as e:
        build_engine(no_weights, tmp_path / "engine", target="cpu", recipe="bf16", mtp=0, progress=False)
    assert "--resume" not in str(e.value) and "nothing was kept" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "no_weights"]


def test_read_only_outputs_and_mount_points_are_clear_errors(tiny_ckpt, tmp_path):
    """No traceback for build / package / make-tiny / compile-plugins into a dir that cannot be written."""
    if os.geteuid() == 0:  # root writes through modes: sysfs refuses everyone
        ro = Path("/sys")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    engine = build_engine(tiny_ckpt, tmp_path / "engine", target="cpu", recipe="bf16", mtp=0, progress=False)
    for args in (
        ["build", "--model", str(tiny_ckpt), "--target", "cpu", "--out", str(ro / "x" / "e")],
        ["package", str(engine), "--out", str(ro / "x" / "r")],
        ["make-tiny", str(ro / "x" / "t")],
        ["compile-plugins", "--out", str(ro / "x" / "p")],
    ):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1, (args, r.output)
        assert r.output.startswith("Error: ") and str(ro) in r.output, (args, r.output)
        assert not isinstance(r.exception, OSError) or r.exception is None or "Traceback" not in r.output
    r = CliRunner().invoke(main, ["build", "--model", str(tiny_ckpt), "--target", "cpu", "--out", "/proc"])
    assert r.exit_code == 1 and "is a mount point" in r.output  # checked first, not an EBUSY after the build


def test_no_progress_draws_no_bar_and_plugins_are_readable_by_others(tiny_ckpt, tmp_path):
    out = tmp_path / "engine"
    r = subprocess.run(
        CLI
        + [
            "build",
            "--model",
            str(tiny_ckpt),
            "--out",
            str(out),
            "--target",
            "b200",
            "--recipe",
            "nvfp4",
            "--calib-samples",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "%|" not in r.stderr and "it/s" not in r.stderr and "kernel/s" not in r.stderr, r.stderr
    old = os.umask(0)
    os.umask(old)
    for p in [out, *out.rglob("*")]:  # a server running as another user must read the engine (was 0700)
        if p.is_dir():
            assert p.stat().st_mode & 0o055 == 0o055 & ~old, p
