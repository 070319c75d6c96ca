"""Atomic writes: all-or-nothing, and published with the umask's modes (not tempfile's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from trtllm_nemotron.fileio import atomic_write_text


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
