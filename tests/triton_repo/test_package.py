"""`package`: engine dir -> model repository (layout, configs parsed back, model.yaml, atomic replace, CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from triton_repo.model_config import parse_pbtxt
from triton_repo.package import TRTLLM_SOURCE_DIR, PackageConfig, package, repo_models
from triton_repo.server import TritonInstall, plan_models
from trtllm_nemotron.cli import main
from trtllm_nemotron.errors import PackageError


def test_cpu_engine_gives_the_nemotron_model_only(cpu_engine, tmp_path):
    repo = package(cpu_engine, tmp_path / "repo", PackageConfig(max_batch_size=4, max_seq_len=512))
    assert repo_models(repo) == ["nemotron"]
    pb = parse_pbtxt((repo / "nemotron" / "config.pbtxt").read_text())
    assert pb.name == "nemotron" and pb.backend == "python" and pb.model_transaction_policy.decoupled
    params = {k: v.string_value for k, v in pb.parameters.items()}
    assert params["engine_dir"] == str(cpu_engine.resolve())
    assert params["max_batch_size"] == "4" and params["max_seq_len"] == "512" and params["mtp"] == ""
    model_py = (repo / "nemotron" / "1" / "model.py").read_text()
    assert "class TritonPythonModel" in model_py and "engine.scheduler(" in model_py
    assert params["stream_interval"] == "1"  # TensorRT-LLM's default: a response per iteration
    manifest = json.loads((repo / "manifest.json").read_text())
    assert manifest["target"] == "cpu" and list(manifest["models"]) == ["nemotron"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left behind


def test_gpu_engine_adds_tensorrt_llm_llmapi_model(b200_engine, tmp_path):
    repo = package(b200_engine, tmp_path / "repo")
    assert repo_models(repo) == ["nemotron", "tensorrt_llm"]
    pb = parse_pbtxt((repo / "tensorrt_llm" / "config.pbtxt").read_text())
    assert (
        pb.name == "tensorrt_llm" and pb.max_batch_size == 0 and not pb.HasField("model_transaction_policy")
    )
    assert pb.input[0].name == "text_input" and pb.output[0].name == "text_output"
    model_yaml = yaml.safe_load((repo / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert model_yaml["model"] == str((b200_engine / "checkpoint").resolve())
    assert model_yaml["backend"] == "pytorch"
    assert model_yaml["speculative_config"] == {"decoding_type": "MTP", "max_draft_len": 3}
    assert model_yaml["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    readme = (repo / "tensorrt_llm" / "1" / "README.md").read_text()
    assert TRTLLM_SOURCE_DIR in readme and "trtllm-python-py3" in readme
    assert not (repo / "tensorrt_llm" / "1" / "model.py").exists()  # NVIDIA's code is never shipped
    code = json.loads((repo / "manifest.json").read_text())["models"]["tensorrt_llm"]["model_code"]
    assert "for GPU hosts" in code and "--trtllm-backend-dir" in code  # was a cryptic "missing: copy (...)"
    # a CPU host loads only nemotron and says why tensorrt_llm was skipped
    install = TritonInstall(Path("/bin/true"), tmp_path, None, has_gpu=False)
    load, skipped = plan_models(repo, install)
    assert load == ["nemotron"] and "GPU" in skipped["tensorrt_llm"]
    gpu_install = TritonInstall(Path("/bin/true"), tmp_path, None, has_gpu=True)
    load, skipped = plan_models(repo, gpu_install)
    assert load == ["nemotron"] and "model.py" in skipped["tensorrt_llm"]


def test_trtllm_backend_dir_copies_nvidias_model_files(b200_engine, tmp_path):
    src = tmp_path / "TensorRT-LLM" / TRTLLM_SOURCE_DIR
    src.mkdir(parents=True)
    (src / "model.py").write_text("# model\n")
    (src / "helpers.py").write_text("# helpers\n")
    repo = package(
        b200_engine, tmp_path / "repo", PackageConfig(trtllm_backend_dir=tmp_path / "TensorRT-LLM")
    )
    assert (repo / "tensorrt_llm" / "1" / "helpers.py").read_text() == "# helpers\n"
    with pytest.raises(PackageError, match="not found"):
        package(b200_engine, tmp_path / "repo2", PackageConfig(trtllm_backend_dir=tmp_path))


def test_refuses_what_is_not_an_engine_and_foreign_outputs(cpu_engine, tmp_path):
    with pytest.raises(PackageError, match="no build.json"):
        package(tmp_path, tmp_path / "repo")
    with pytest.raises(PackageError, match="does not exist"):
        package(tmp_path / "missing", tmp_path / "repo")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(PackageError, match="--force"):
        package(cpu_engine, foreign)
    assert (foreign / "keep.txt").exists()
    repo = package(cpu_engine, tmp_path / "repo")
    (repo / "stale").mkdir()
    package(cpu_engine, repo, PackageConfig(copy_engine=True))  # our own repo: replaced atomically
    assert not (repo / "stale").exists()
    assert (repo / "nemotron" / "1" / "engine" / "build.json").is_file()
    pb = parse_pbtxt((repo / "nemotron" / "config.pbtxt").read_text())
    assert pb.parameters["engine_dir"].string_value == "1/engine"
    with pytest.raises(PackageError, match="max_batch_size"):
        PackageConfig(max_batch_size=0)


def test_package_cli(b200_engine, tmp_path):
    r = CliRunner().invoke(
        main, ["package", str(b200_engine), "--out", str(tmp_path / "repo"), "--no-trtllm"]
    )
    assert r.exit_code == 0, r.output
    assert "nemotron" in r.output and repo_models(tmp_path / "repo") == ["nemotron"]
    r = CliRunner().invoke(main, ["package", str(tmp_path), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "build.json" in r.output


def test_copy_engine_repository_is_self_contained(b200_engine, tmp_path):
    eng = tmp_path / "engine"
    shutil.copytree(b200_engine, eng)
    repo = package(eng, tmp_path / "repo", PackageConfig(copy_engine=True))
    model_yaml_text = (repo / "tensorrt_llm" / "1" / "model.yaml").read_text()
    model_yaml = yaml.safe_load(model_yaml_text)
    copied = repo / "nemotron" / "1" / "engine" / "checkpoint"
    assert model_yaml["model"] == str(copied.resolve()) and (copied / "config.json").is_file()
    pb = parse_pbtxt((repo / "nemotron" / "config.pbtxt").read_text())
    assert pb.parameters["engine_dir"].string_value == "1/engine"
    shutil.rmtree(eng)  # the original engine is gone: nothing in the repository's models refers to it
    for f in (repo / "nemotron" / "config.pbtxt", repo / "tensorrt_llm" / "config.pbtxt"):
        assert str(eng) not in f.read_text()
    assert str(eng) not in model_yaml_text and Path(model_yaml["model"]).is_dir()
