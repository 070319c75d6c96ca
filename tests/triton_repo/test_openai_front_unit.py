"""The OpenAI front's HTTP behaviour without a Triton behind it: 503 while Triton is not ready, request
validation (400) before anything reaches Triton, model ids, and the `serve` / CLI wiring."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from triton_repo.openai_front.app import FrontConfig, create_app, engine_name
from triton_repo.openai_front.launch import repo_engine_dir
from triton_repo.server import ServerConfig, free_ports
from trtllm_nemotron.errors import PackageError


@pytest.fixture(scope="module")
def app_without_triton(cpu_engine):
    port = free_ports(1)[0]  # nothing listens there
    with TestClient(create_app(FrontConfig(f"127.0.0.1:{port}", cpu_engine))) as c:
        yield c


def test_503_while_triton_is_not_ready(app_without_triton):
    r = app_without_triton.get("/health")
    assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
    r = app_without_triton.post(
        "/v1/chat/completions",
        json={"model": "nemotron", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = app_without_triton.post("/v1/completions", json={"model": "nemotron", "prompt": "x", "stream": True})
    assert r.status_code == 503  # a refused stream is an HTTP error, not an event in a 200 stream


def test_validation_happens_before_triton(app_without_triton):
    r = app_without_triton.post("/v1/completions", json={"model": "nemotron", "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = app_without_triton.post(
        "/v1/completions", json={"model": "nemotron", "prompt": "a", "stream_options": {}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    r = app_without_triton.post(
        "/v1/chat/completions",
        json={
            "model": "nemotron",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
    )
    assert r.status_code == 400 and "'g'" in r.json()["error"]["message"]
    r = app_without_triton.post(
        "/v1/chat/completions",
        json={
            "model": "nemotron",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = app_without_triton.post(
        "/v1/chat/completions", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    r = app_without_triton.post("/v1/chat/completions", json={"model": "other", "messages": []})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_model_ids_are_nemotron_and_the_engine_name(app_without_triton, cpu_engine):
    ids = [m["id"] for m in app_without_triton.get("/v1/models").json()["data"]]
    assert (
        ids == ["nemotron", engine_name(cpu_engine)] == ["nemotron", cpu_engine.name]
    )  # no source in build.json
    built = {"model": {"source": "/models/NVIDIA-Nemotron-3-Super-120B-A12B-BF16"}}
    (cpu_engine.parent / "named").mkdir(exist_ok=True)
    (cpu_engine.parent / "named" / "build.json").write_text(json.dumps(built))
    assert engine_name(cpu_engine.parent / "named") == "NVIDIA-Nemotron-3-Super-120B-A12B-BF16"


def test_repo_engine_dir_and_port_checks(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {"nemotron": {"engine_dir": "1/engine"}}}))
    assert repo_engine_dir(tmp_path) == (tmp_path / "nemotron" / "1" / "engine").resolve()
    with pytest.raises(PackageError, match="manifest.json"):
        repo_engine_dir(tmp_path / "missing")
    with pytest.raises(PackageError, match="--openai-port"):
        ServerConfig(tmp_path, openai_port=8001)


def test_serve_help_names_openai_port():
    from click.testing import CliRunner

    from trtllm_nemotron.cli import main

    out = CliRunner().invoke(main, ["serve", "--help"])
    assert out.exit_code == 0 and "--openai-port" in out.output
