"""Engine-dir builds from a tiny checkpoint: every target x recipe, manifests and hashes, atomicity, resume."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from click.testing import CliRunner

from builder import pipeline
from builder.manifest import read_manifest, verify_engine_dir
from builder.pipeline import STAGES, build_engine, staging_dir
from builder.trtllm_config import unknown_keys
from trtllm_nemotron.errors import BuildError

TARGETS = ("b200", "h200", "h100", "cpu")
RECIPES = ("bf16", "fp8", "nvfp4", "nvfp4-super")
FAST = dict(progress=False, calib_samples=2, calib_seq_len=32)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("target", TARGETS)
def test_every_target_and_recipe_builds(tiny_ckpt, tmp_path, target, recipe):
    out = build_engine(tiny_ckpt, tmp_path / "engine", target=target, recipe=recipe, mtp=3, **FAST)
    assert out == (tmp_path / "engine").absolute()
    assert verify_engine_dir(out) == []
    m = read_manifest(out)
    assert m["target"]["name"] == target and m["recipe"]["name"] == recipe
    assert m["mtp"] == {"max_draft_len": 3, "num_nextn_predict_layers": 1, "mode": "MTP_EAGLE_ONE_MODEL"}
    assert [s["name"] for s in m["stages"]] == list(STAGES)
    assert all(s["seconds"] >= 0 for s in m["stages"])
    assert m["tools"]["python"] and m["tools"]["torch"]
    assert set(m["inputs"]["files"]) >= {"config.json", "tokenizer.json"}
    assert (out / "checkpoint" / "config.json").is_file() and (
        out / "checkpoint" / "tokenizer.json"
    ).is_file()
    # the planner's weight bytes are exactly the tensor bytes of the checkpoint written
    assert _tensor_bytes(out / "checkpoint") == m["plan"]["weights_bytes"]
    quantized = recipe != "bf16"
    assert (out / "checkpoint" / "hf_quant_config.json").is_file() == quantized
    if quantized:
        assert {"kl_mean", "top1_agreement"} <= set(m["accuracy"]), m["accuracy"]
        assert m["recipe"]["kv_cache"] == "fp8"
    else:
        assert m["accuracy"] is None and m["quantization"] is None
    assert m["validation"]["status"] == "skipped" and "not requested" in m["validation"]["reason"]
    if target == "cpu":
        assert not (out / "trtllm").exists() and not (out / "plugins").exists()
        assert m["trtllm"] is None and m["plugins"] is None
        return
    sm = {"b200": "sm_100", "h200": "sm_90", "h100": "sm_90"}[target]
    assert [p.name for p in (out / "plugins").iterdir()] == [sm]
    assert any((out / "plugins" / sm).rglob("*"))
    cfg = yaml.safe_load((out / "trtllm" / "llm_api.yaml").read_text())
    assert unknown_keys(cfg) == []
    assert cfg["speculative_config"] == {"decoding_type": "MTP", "max_draft_len": 3}
    assert cfg["kv_cache_config"]["enable_block_reuse"] is False
    want_backend = "TRTLLM" if (target == "b200" and recipe in ("nvfp4", "nvfp4-super")) else "CUTLASS"
    assert cfg["moe_config"]["backend"] == want_backend == m["trtllm"]["moe_backend"]
    # the tiny model is sized by the planner: 1 GPU, its whole context, the capped batch
    assert (cfg["tensor_parallel_size"], cfg["max_seq_len"], cfg["max_batch_size"]) == (1, 4096, 2048)
    assert m["plan"]["fits"] and m["plan"]["batch"] == 2048


def _tensor_bytes(ckpt) -> int:
    from safetensors import safe_open

    size = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1, "I8": 1, "F8_E4M3": 1}
    total = 0
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                sl = h.get_slice(k)
                n = 1
                for d in sl.get_shape():
                    n *= d
                total += n * size[sl.get_dtype()]
    return total


def _cpu_build(src, out, **kw):
    return build_engine(src, out, target="cpu", recipe="bf16", mtp=3, **FAST, **kw)


def test_tampered_engine_dir_is_detected(tiny_ckpt, tmp_path):
    out = _cpu_build(tiny_ckpt, tmp_path / "e")
    assert verify_engine_dir(out) == []
    shard = next((out / "checkpoint").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any(p.startswith(f"hash mismatch: checkpoint/{shard.name}") for p in verify_engine_dir(out))
    (out / "checkpoint" / "extra.txt").write_text("x")
    (out / "checkpoint" / "tokenizer.json").unlink()
    problems = verify_engine_dir(out)
    assert "file not in manifest: checkpoint/extra.txt" in problems
    assert "missing file: checkpoint/tokenizer.json" in problems
    m = json.loads((out / "build.json").read_text())
    m["format_version"] = 99
    (out / "build.json").write_text(json.dumps(m))
    assert "format_version 99" in verify_engine_dir(out)[0]
    (out / "build.json").unlink()
    assert "no build.json" in verify_engine_dir(out)[0]


def test_build_twice_rebuilds_cleanly(tiny_ckpt, tmp_path):
    out = _cpu_build(tiny_ckpt, tmp_path / "engine")
    first = read_manifest(out)["created_utc"]
    (out / "stale.txt").write_text("from an old build")
    out2 = _cpu_build(tiny_ckpt, tmp_path / "engine")
    assert out2 == out and verify_engine_dir(out) == [] and not (out / "stale.txt").exists()
    assert read_manifest(out)["created_utc"] >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]  # no staging / old dirs left


def test_interrupted_build_leaves_no_engine_dir_and_resumes(tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "engine"

    def boom(self):
        raise RuntimeError("power cut")

    monkeypatch.setattr(pipeline._Build, "stage_validate", boom)
    with pytest.raises(BuildError, match=r"(?s)stage 'validate' failed.*power cut.*--resume"):
        _cpu_build(tiny_ckpt, out)
    assert not out.exists()
    state = json.loads((staging_dir(out) / ".state.json").read_text())
    assert list(state["done"]) == list(STAGES[: STAGES.index("validate")])

    def must_not_run(self):
        raise AssertionError("a completed stage ran again on --resume")

    monkeypatch.undo()  # the real validate stage again
    monkeypatch.setattr(pipeline._Build, "stage_inspect", must_not_run)
    monkeypatch.setattr(pipeline._Build, "stage_quantize", must_not_run)
    _cpu_build(tiny_ckpt, out, resume=True)
    assert verify_engine_dir(out) == [] and not staging_dir(out).exists()
    assert [s["name"] for s in read_manifest(out)["stages"]] == list(STAGES)


def test_keyboard_interrupt_and_param_mismatch(tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "engine"

    def ctrl_c(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Build, "stage_checkpoint", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _cpu_build(tiny_ckpt, out)
    assert not out.exists() and staging_dir(out).is_dir()
    monkeypatch.undo()
    with pytest.raises(BuildError, match="was started with.*rerun without --resume"):
        build_engine(tiny_ckpt, out, target="cpu", recipe="bf16", mtp=1, resume=True, **FAST)
    assert not out.exists()
    _cpu_build(tiny_ckpt, out)  # no --resume: the stale staging dir is discarded
    assert verify_engine_dir(out) == []


def test_refusals(tiny_ckpt, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not an engine dir"):
        _cpu_build(tiny_ckpt, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(BuildError, match=r"(?s)impossible plan.*DOES NOT FIT"):
        build_engine(tiny_ckpt, tmp_path / "e", target="h100", recipe="bf16", max_batch_size=10**9, **FAST)
    assert not (tmp_path / "e").exists()
    for mtp in (-1, 17):  # 17: the runtime would refuse the engine (`build --mtp 100` used to succeed)
        with pytest.raises(BuildError, match=r"must be in 0\.\.16"):
            build_engine(tiny_ckpt, tmp_path / "e2", target="cpu", recipe="bf16", mtp=mtp, **FAST)


def test_validate_reports_why_it_was_skipped(tiny_ckpt, tmp_path):
    out = build_engine(tiny_ckpt, tmp_path / "e", target="cpu", recipe="bf16", mtp=3, validate=True, **FAST)
    v = read_manifest(out)["validation"]
    assert v["status"] == "skipped" and "cpu target" in v["reason"]


def test_validate_on_a_gpu_target_without_tensorrt_llm_says_why(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "tensorrt_llm", None
    )  # `import tensorrt_llm` fails, as on a host without it
    out = build_engine(tiny_ckpt, tmp_path / "e", target="h100", recipe="bf16", mtp=3, validate=True, **FAST)
    v = read_manifest(out)["validation"]
    assert v["status"] == "skipped" and "tensorrt_llm does not import" in v["reason"] and v["output"] is None
    assert verify_engine_dir(out) == []  # a skipped validation still leaves a complete engine dir


@pytest.mark.gpu
@pytest.mark.trt
def test_validate_on_gpu_runs_tensorrt_llm(tiny_ckpt, tmp_path):
    """On a B200 / H100-class host with TensorRT-LLM: `--validate` generates with tensorrt_llm.LLM."""
    import tensorrt_llm  # noqa: F401  (a trt-tier host must have it: an ImportError fails the test)
    import torch

    major, minor = torch.cuda.get_device_capability()
    target = {(10, 0): "b200", (9, 0): "h100"}.get((major, minor))
    assert target, f"this GPU is sm_{major}{minor}; --validate needs an sm_100 or sm_90 build target"
    out = build_engine(tiny_ckpt, tmp_path / "e", target=target, recipe="bf16", mtp=3, validate=True, **FAST)
    v = read_manifest(out)["validation"]
    assert v["status"] == "passed" and v["reason"] == "tensorrt_llm.LLM" and v["output"], v


@pytest.mark.gpu
@pytest.mark.trt
def test_validate_on_gpu_runs_the_tensorrt_engine(tiny_ckpt, tmp_path):
    """On a GPU host with TensorRT: `--trt --validate` builds trt/sm_<N>.plan from onnx/ and runs one prompt
    through it (states bound in place) against the reference network."""
    import tensorrt  # noqa: F401  (a trt-tier host must have it: an ImportError fails the test)
    import torch

    major, minor = torch.cuda.get_device_capability()
    target = {(10, 0): "b200", (9, 0): "h100"}.get((major, minor))
    assert target, f"this GPU is sm_{major}{minor}; --trt needs an sm_100 or sm_90 build target"
    out = build_engine(
        tiny_ckpt,
        tmp_path / "e",
        target=target,
        recipe="bf16",
        mtp=3,
        trt=True,
        validate=True,
        max_batch_size=4,
        max_seq_len=256,
        **FAST,
    )
    m = read_manifest(out)
    assert m["tensorrt_engine"]["plans"]["model"]["file"] == f"trt/sm_{major}{minor}.plan"
    assert m["kernel_versions"]["tensorrt"] and m["kernel_versions"]["ptx"]
    t = m["validation"]["tensorrt"]
    assert t["status"] == "passed" and t["tokens"][0] == t["reference_tokens"][0], t


def test_cli_build_and_plan(tiny_ckpt, tmp_path):
    from trtllm_nemotron.cli import main

    r = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            str(tiny_ckpt),
            "--target",
            "cpu",
            "--recipe",
            "bf16",
            "--out",
            str(tmp_path / "e"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "engine dir:" in r.output and verify_engine_dir(tmp_path / "e") == []
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    (tmp_path / "e" / "checkpoint" / "config.json").write_text(
        (tmp_path / "e" / "checkpoint" / "config.json").read_text() + " "
    )
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "e")])
    assert r.exit_code == 1 and "hash mismatch: checkpoint/config.json" in r.output
    r = CliRunner().invoke(
        main, ["plan", "--model", "super-120b", "--target", "h100", "--recipe", "nvfp4-super"]
    )
    assert r.exit_code == 1
    assert "DOES NOT FIT" in r.output and "79.01 GB" in r.output and ">= 2 x h100" in r.output
    r = CliRunner().invoke(main, ["plan", "--model", "super-120b", "--target", "b200", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["fits"] and d["recipe"] == "nvfp4-super" and d["max_batch"] >= 64


def test_default_model_dir(build_cache):
    from builder.defaults import EMBEDDED_MODEL_DIR, default_model_dir

    d = default_model_dir()
    assert (d / "config.json").is_file()
    if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
        assert d == build_cache / "tiny-seed0" and (d / "tokenizer.json").is_file()
        assert default_model_dir() == d  # made once, then reused


_KILL_ME = """
import sys, time
from builder import pipeline
def slow(self):
    time.sleep(120)  # killed here
pipeline._Build.stage_validate = slow
pipeline.build_engine(sys.argv[1], sys.argv[2], target="cpu", recipe="bf16", mtp=3, progress=False,
                      calib_samples=2, calib_seq_len=32)
"""


def test_sigkill_mid_build_then_resume(tiny_ckpt, tmp_path):
    """A hard kill (no cleanup code runs) leaves only the hidden staging dir; --resume finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "engine"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_ME, str(tiny_ckpt), str(out)], env=os.environ.copy())
    state = staging_dir(out) / ".state.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if state.is_file() and "trtllm_config" in json.loads(state.read_text() or "{}").get("done", {}):
                break
            assert proc.poll() is None, "the build exited before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("the build never reached the validate stage")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    # the hidden staging dir, and the build's lock file (unlocked: the kernel dropped the lock with the process)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([staging_dir(out).name, ".engine.lock"])
    _cpu_build(tiny_ckpt, out, resume=True)
    assert verify_engine_dir(out) == []
    stages = {s["name"]: s["status"] for s in read_manifest(out)["stages"]}
    assert stages["validate"] == "skipped" and stages["inspect"] == "done"


def test_resume_refuses_changed_inputs(tiny_ckpt, tmp_path, monkeypatch):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    out = tmp_path / "engine"

    def boom(self):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(pipeline._Build, "stage_plugins", boom)
    with pytest.raises(BuildError, match="interrupted"):
        _cpu_build(src, out)
    monkeypatch.undo()
    (src / "generation_config.json").write_text((src / "generation_config.json").read_text() + "\n")
    with pytest.raises(BuildError, match="changed since the partial build"):
        _cpu_build(src, out, resume=True)
    assert not out.exists()


def test_cli_build_with_a_preset_and_refused_gpu_counts(tiny_ckpt, tmp_path):
    from trtllm_nemotron.cli import main

    out = tmp_path / "e"
    r = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            str(tiny_ckpt),
            "--target",
            "h200",
            "--recipe",
            "nvfp4-super",
            "--preset",
            "latency",
            "--out",
            str(out),
            "--no-progress",
            "--calib-samples",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert verify_engine_dir(out) == []
    cfg = yaml.safe_load((out / "trtllm" / "llm_api.yaml").read_text())
    assert unknown_keys(cfg) == []
    assert cfg["max_batch_size"] == 16 and cfg["stream_interval"] == 1 and cfg["enable_attention_dp"] is False
    assert cfg["speculative_config"]["num_nextn_predict_layers"] == 3
    assert cfg["moe_config"] == {"backend": "MARLIN"} and cfg["nvfp4_gemm_config"] == {
        "allowed_backends": ["marlin"]
    }
    m = read_manifest(out)
    assert m["trtllm"]["preset"] == "latency" and m["trtllm"]["moe_backend"] == "MARLIN"
    assert any("FP8 is the recommended recipe on H100/H200" in n for n in m["trtllm"]["notes"])
    assert "note: FP8 is the recommended recipe on H100/H200" in r.output  # told on the command line too
    assert m["mtp"]["max_draft_len"] == 3
    r = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            str(tiny_ckpt),
            "--target",
            "b200",
            "--gpus",
            "3",
            "--out",
            str(tmp_path / "e3"),
            "--no-progress",
        ],
    )
    assert r.exit_code != 0 and "tensor-parallel size 1, 2, 4 or 8" in r.output
    assert not (tmp_path / "e3").exists()
