"""`inspect` on a lone config.json, text output, and the engine-dir hook."""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import types

from click.testing import CliRunner

from trtllm_nemotron.cli import main
from trtllm_nemotron.config import preset


def test_super_config_alone(tmp_path):
    preset("super-120b").to_json(tmp_path / "config.json")
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "config.json")])
    assert res.exit_code == 0, res.output
    assert "123,611,033,088" in res.output
    assert "88 (40 mamba, 8 attention, 40 moe)" in res.output
    assert "512 experts, top-22" in res.output and "latent 1024" in res.output
    js = CliRunner().invoke(main, ["inspect", str(tmp_path / "config.json"), "--json"])
    r = json.loads(js.stdout)
    assert r["parameters"]["total"] == 123611033088
    assert r["parameters"]["mtp"] == 2942325248  # spec nemotron_h.md §3.4
    assert r["expected_tensors"] == 42683
    assert r["tensors"] == 0 and r["problems"] == [] and r["kind"] == "config"


def test_text_report(tiny_dir):
    res = CliRunner().invoke(main, ["inspect", str(tiny_dir)])
    assert res.exit_code == 0, res.output
    for s in (
        "pattern        MEM*EME",
        "mtp            1 block(s), pattern *E",
        "tensors        200 (expected 200)",
    ):
        assert s in res.output


def test_engine_dir_hook(tmp_path, tiny_dir, monkeypatch):
    engine = tmp_path / "engine"
    shutil.copytree(tiny_dir, engine / "checkpoint")
    (engine / "build.json").write_text("{}")
    seen = []
    builder = types.ModuleType("builder")
    builder.__spec__ = importlib.machinery.ModuleSpec("builder", None, is_package=True)
    manifest = types.ModuleType("builder.manifest")
    manifest.__spec__ = importlib.machinery.ModuleSpec("builder.manifest", None)
    manifest.verify_engine_dir = lambda p: seen.append(p) or ["build.json: missing 'format_version'"]
    monkeypatch.setitem(sys.modules, "builder", builder)
    monkeypatch.setitem(sys.modules, "builder.manifest", manifest)
    res = CliRunner().invoke(main, ["inspect", str(engine), "--json"])
    assert res.exit_code == 1
    r = json.loads(res.stdout)
    assert seen == [engine] and r["kind"] == "engine"
    assert r["problems"] == ["engine: build.json: missing 'format_version'"]
    assert r["engine"]["verified"] is True and r["tensors"] == 200
