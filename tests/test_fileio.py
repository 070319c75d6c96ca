"""Atomic writes: all-or-nothing, and published with the umask's modes (not tempfile's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from trtllm_nemotron.fileio import (
    CACHE_ENV,
    OLD_MARK,
    TEMP_MARK,
    atomic_dir,
    atomic_write_text,
    cache_dir,
    replace_dir,
    stale_siblings,
)


def test_atomic_write_text_modes_and_replace(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a.json", "1\n")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        atomic_write_text(p, "2\n")
    finally:
        os.umask(old)
    assert p.read_text() == "2\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_text_failure_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "b.txt", 5)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def _siblings(parent):
    return sorted(p.name for p in parent.iterdir())


def test_atomic_dir_publishes_replaces_and_keeps_executables(tmp_path):
    target = tmp_path / "out"
    old = os.umask(0o022)
    try:
        with atomic_dir(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(f".out{TEMP_MARK}{os.getpid()}-")
            assert not target.exists()  # nothing is visible until the block ends
            (tmp / "a").write_text("1")
            (tmp / "tool").write_text("#!/bin/sh\n")
            (tmp / "tool").chmod(0o700)
        assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not mkdtemp's 0700
        assert stat.S_IMODE((target / "a").stat().st_mode) == 0o644
        assert stat.S_IMODE((target / "tool").stat().st_mode) == 0o755  # still executable
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
    finally:
        os.umask(old)
    assert _siblings(tmp_path) == ["out"] and _siblings(target) == ["b"]  # replaced, the old one deleted


def test_atomic_dir_failure_leaves_target_as_it_was(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(RuntimeError, match="stage failed"):
        with atomic_dir(target) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("stage failed")
    assert _siblings(tmp_path) == ["out"] and (target / "keep").read_text() == "old"


def test_atomic_dir_without_replace_refuses_an_existing_target(tmp_path):
    target = tmp_path / "entry"
    with pytest.raises(FileExistsError):
        with atomic_dir(target, replace=False) as tmp:
            (tmp / "mine").write_text("1")
            target.mkdir()  # another process got there first
            (target / "theirs").write_text("2")
    assert _siblings(tmp_path) == ["entry"] and _siblings(target) == ["theirs"]


def test_replace_dir_puts_the_previous_target_back_when_the_rename_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(FileNotFoundError):
        replace_dir(tmp_path / "missing", target)
    assert _siblings(tmp_path) == ["out"] and (target / "keep").read_text() == "old"


def test_stale_siblings_are_those_of_dead_writers(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    target = tmp_path / "out"
    (tmp_path / f".out{TEMP_MARK}{dead_pid}-abcd1234").mkdir()
    (tmp_path / f".out{OLD_MARK}{dead_pid}-abcd1234").mkdir()
    (tmp_path / f".out{TEMP_MARK}{os.getpid()}-abcd1234").mkdir()  # a live writer: this process
    (tmp_path / f".other{TEMP_MARK}{dead_pid}-abcd1234").mkdir()  # another target's
    assert [p.name for p in stale_siblings(target)] == sorted(
        [f".out{TEMP_MARK}{dead_pid}-abcd1234", f".out{OLD_MARK}{dead_pid}-abcd1234"]
    )


def test_cache_dir_one_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TRTLLM_NEMOTRON_CACHE", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "trtllm-nemotron"
    (tmp_path / "ro").write_text("")  # XDG_CACHE_HOME unusable (a file): a per-user dir under the temp dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    assert cache_dir().name == f"trtllm-nemotron-{os.getuid()}"
    monkeypatch.setenv("TRTLLM_NEMOTRON_CACHE", str(tmp_path / "old"))  # the former name: warns, still works
    with pytest.warns(FutureWarning, match=CACHE_ENV):
        assert cache_dir() == tmp_path / "old"
