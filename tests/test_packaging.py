"""The built wheel holds everything a user's install runs: every module and every data file of the five
packages (the embedded model, the Triton model template, TensorRT-LLM's option list, the native step's C++
source), and the `trtllm-nemotron` entry point. Built from the tracked files, as a fresh clone builds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trtllm_nemotron", "plugins", "builder", "triton_repo", "clients")


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail(
            f"{ROOT} is not a git checkout with git on PATH: the wheel is checked against `git ls-files`"
        )
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


@pytest.mark.slow
def test_wheel_holds_every_module_and_data_file(tmp_path):
    src = tmp_path / "src"
    files = _tracked()
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("trtllm_nemotron-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {p for p in files if p.split("/")[0] in PACKAGES and not p.endswith(".md")}
    assert want - names == set(), "tracked package files missing from the wheel (add them to package-data)"
    assert "trtllm_nemotron/assets/nemotron-tiny/model-00001-of-00001.safetensors" in names
    assert "trtllm_nemotron/runtime/native/step.cpp" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "trtllm-nemotron = trtllm_nemotron.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
