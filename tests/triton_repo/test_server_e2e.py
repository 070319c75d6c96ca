"""End to end on a real tritonserver: default engine -> package -> `trtllm-nemotron serve` -> gRPC / HTTP clients.

One server per module (started through the `serve` CLI, stopped by the last test with SIGINT). Greedy text
through Triton must equal the in-process runtime's, over gRPC streaming, HTTP SSE and HTTP non-streaming;
8 concurrent streams must all be right; bad requests get error responses and the server stays healthy;
a client that drops its stream frees its engine slot (the model's `nemotron_active_requests` gauge).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import clients
from tests.triton_repo.conftest import Served, serve_repo
from triton_repo.package import PackageConfig, package
from triton_repo.server import _shm_regions, free_ports, port_free

pytestmark = (
    pytest.mark.slow
)  # a real tritonserver (make test runs it; -m "not slow" skips it in a quick loop)

MAX_SEQ_LEN = 2048  # long enough that a full-length generation outlasts the cancel tests on a fast host
MAX_TOKENS = 8
PROMPTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "import numpy as np",
    "Once upon a time",
    "class Stack:",
    "SELECT * FROM",
    "Mamba is a state space model",
    "for i in range(10):",
]


@pytest.fixture(scope="module")
def default_engine(tmp_path_factory) -> Path:
    """The default engine (`make build-engine`: embedded model, b200, nvfp4-super, MTP 3), built here."""
    from builder.defaults import DEFAULT_MTP, DEFAULT_RECIPE, DEFAULT_TARGET, default_model_dir
    from builder.pipeline import build_engine

    out = tmp_path_factory.mktemp("e2e") / "engine"
    return build_engine(
        default_model_dir(),
        out,
        target=DEFAULT_TARGET,
        recipe=DEFAULT_RECIPE,
        mtp=DEFAULT_MTP,
        progress=False,
    )


@pytest.fixture(scope="module")
def served(default_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    # stream_interval 2: streamed responses carry merged deltas (first token, then every 2nd iteration, last)
    repo = package(
        default_engine,
        tmp / "repo",
        PackageConfig(max_batch_size=8, max_seq_len=MAX_SEQ_LEN, device="cpu", stream_interval=2),
    )
    yield from serve_repo(default_engine, repo, tmp)


@pytest.fixture(scope="module")
def reference(default_engine):
    """The in-process runtime on the same engine: greedy completions per prompt."""
    from trtllm_nemotron.runtime import Engine, SamplingParams

    engine = Engine.load(default_engine, device="cpu", max_batch_size=8, max_seq_len=MAX_SEQ_LEN)
    cache: dict[str, object] = {}

    def complete(prompt: str):
        if prompt not in cache:
            cache[prompt] = engine.generate(prompt, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))
        return cache[prompt]

    def complete_batch(prompts: list[str]):
        """All prompts in flight together on the in-process scheduler (continuous batching, as in the server)."""
        sched = engine.scheduler()
        try:
            handles = [
                sched.submit(p, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)) for p in prompts
            ]
            return [h.result() for h in handles]
        finally:
            sched.shutdown()

    complete.batch = complete_batch
    complete.engine = engine
    return complete


def _active(served: Served) -> int:
    text = urllib.request.urlopen(served.metrics, timeout=10).read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("nemotron_active_requests")]
    assert lines, "the nemotron model exports the nemotron_active_requests gauge"
    return int(float(lines[0].rsplit(" ", 1)[1]))


def _wait_idle(served: Served, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while _active(served) != 0:
        assert time.monotonic() - t0 < timeout, "a slot was not freed"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_serve_loads_nemotron_and_reports_skips(served):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    log = served.log.read_text()
    assert "loading: nemotron" in log
    if (served.repo / "tensorrt_llm").is_dir():  # GPU-target engine on a CPU host
        assert "skipped: tensorrt_llm: needs a CUDA GPU" in log
    h = httpclient.InferenceServerClient(served.http)
    try:
        assert h.is_server_live() and h.is_server_ready() and h.is_model_ready("nemotron")
        cfg = h.get_model_config("nemotron")
        assert cfg["model_transaction_policy"]["decoupled"] is True
        meta = h.get_model_metadata("nemotron")
        assert {"text_input", "streaming", "sampling_param_max_tokens"} <= {t["name"] for t in meta["inputs"]}
        index = {m["name"]: m.get("state") for m in h.get_model_repository_index()}
        assert index["nemotron"] == "READY" and index.get("tensorrt_llm") in (None, "UNAVAILABLE", "")
    finally:
        h.close()
    g = grpcclient.InferenceServerClient(served.grpc)
    try:
        assert g.is_server_ready() and g.is_model_ready("nemotron")
        meta = g.get_model_metadata("nemotron", as_json=True)
        assert {"text_output", "finish_reason", "acceptance_rate"} <= {t["name"] for t in meta["outputs"]}
    finally:
        g.close()


@pytest.mark.parametrize("protocol, stream", [("grpc", True), ("http", True), ("http", False)])
def test_greedy_text_matches_in_process_runtime(served, reference, protocol, stream):
    prompt = PROMPTS[0]
    ref = reference(prompt)
    url = served.grpc if protocol == "grpc" else served.http
    r = clients.generate(
        prompt, url=url, protocol=protocol, stream=stream, max_tokens=MAX_TOKENS, temperature=0.0
    )
    assert r.text == ref.text
    assert r.finish_reason == ref.finish_reason
    assert r.num_tokens == len(ref.token_ids)
    assert r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s and r.tokens_per_s > 0
    if stream:
        assert r.num_responses >= 2 and len(r.itl_s) == r.num_tokens - 1
    if ref.stats.get("draft_tokens"):
        assert r.acceptance_rate == pytest.approx(ref.stats["acceptance_rate"], abs=1e-6)


def test_generate_cli_with_url(served, reference):
    """`trtllm-nemotron generate --url` (what `make client` runs) prints the same greedy text."""
    prompt = PROMPTS[0]
    base = [sys.executable, "-m", "trtllm_nemotron", "generate", "--max-tokens", str(MAX_TOKENS)]
    out = subprocess.run(
        base + ["--url", served.grpc, "--protocol", "grpc", "--stream", prompt],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip("\n") == reference(prompt).text.rstrip("\n")
    out = subprocess.run(
        base + ["--url", served.http, "--protocol", "http", "--json", prompt],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["text"] == reference(prompt).text and got["num_tokens"] == len(reference(prompt).token_ids)
    port = free_ports(1)[0]
    out = subprocess.run(
        base + ["--url", f"127.0.0.1:{port}", prompt], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "cannot reach Triton" in out.stderr


def test_stream_yields_deltas_that_concatenate(served, reference):
    s = clients.stream(PROMPTS[1], url=served.grpc, protocol="grpc", max_tokens=MAX_TOKENS)
    deltas = list(s)
    assert "".join(deltas) == s.result.text == reference(PROMPTS[1]).text
    assert s.result.num_responses >= 2


def test_eight_concurrent_streams_all_complete_correctly(served, reference):
    import threading

    refs = reference.batch(PROMPTS)
    peak, done = [0], threading.Event()

    def watch() -> None:  # requests in flight in the model at once (the runtime's scheduler batches them)
        while not done.is_set():
            peak[0] = max(peak[0], _active(served))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        results = clients.generate_batch(
            PROMPTS, url=served.grpc, protocol="grpc", concurrency=8, stream=True, max_tokens=MAX_TOKENS
        )
    finally:
        done.set()
        watcher.join()
    assert [r.text for r in results] == [x.text for x in refs]
    assert all(r.finish_reason == x.finish_reason for r, x in zip(results, refs, strict=True))
    assert peak[0] >= 4, f"at most {peak[0]} requests were in flight together"
    assert _wait_idle(served) < 60


def test_thirty_two_concurrent_streams_over_grpc_and_http_complete_correctly(served, reference):
    """More streams than engine slots (8): the rest queue in the scheduler; every text equals the request run
    alone (greedy results do not depend on the batch), one sender thread answers them all."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = [p + " " * (i // len(PROMPTS)) for i, p in enumerate(PROMPTS * 4)]
    with ThreadPoolExecutor(2) as pool:  # 16 gRPC and 16 HTTP streams in flight together
        futs = [
            pool.submit(
                clients.generate_batch,
                part,
                url=url,
                protocol=proto,
                concurrency=16,
                stream=True,
                max_tokens=MAX_TOKENS,
            )
            for part, url, proto in ((prompts[:16], served.grpc, "grpc"), (prompts[16:], served.http, "http"))
        ]
        grpc, http = (f.result() for f in futs)
    assert [r.text for r in grpc + http] == [reference(p).text for p in prompts]
    assert all(
        r.finish_reason == reference(p).finish_reason for r, p in zip(grpc + http, prompts, strict=True)
    )
    assert _wait_idle(served) < 60


def _raw_grpc_stream(served: Served, tensors: list[tuple[str, np.ndarray, str]]) -> list:
    """Send one raw request over a gRPC stream; the responses up to the final one, each an error message (str)
    or a dict {output name: first value}."""
    import queue

    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(served.grpc)
    q: queue.Queue = queue.Queue()
    out: list = []
    try:
        c.start_stream(callback=lambda result, error: q.put((result, error)))
        inputs = []
        for name, arr, dtype in tensors:
            x = grpcclient.InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(arr)
            inputs.append(x)
        c.async_stream_infer("nemotron", inputs, enable_empty_final_response=True)
        while True:
            result, error = q.get(timeout=120)
            if error is not None:
                out.append(error.message())
                return out
            resp = result.get_response()
            values = {o.name: clients.client._scalar(result.as_numpy(o.name)) for o in resp.outputs}
            if values:
                out.append(values)
            if resp.parameters["triton_final_response"].bool_param:
                return out
    finally:
        c.stop_stream()
        c.close()


def _raw_grpc(served: Served, tensors: list[tuple[str, np.ndarray, str]]) -> str:
    """Send one raw request over a gRPC stream; return the error message (fails if it succeeded)."""
    out = _raw_grpc_stream(served, tensors)
    assert out and isinstance(out[-1], str), f"expected an error response, got {out}"
    return out[-1]


def _prompt(text: str) -> tuple[str, np.ndarray, str]:
    return ("text_input", np.array([text.encode()], dtype=np.object_), "BYTES")


def test_text_input_only_gets_generated_text_without_the_prompt(served, reference):
    """As from TensorRT-LLM's llmapi model: exclude_input_from_output defaults to true (runtime defaults apply)."""
    from trtllm_nemotron.runtime import SamplingParams

    prompt = PROMPTS[3]
    out = _raw_grpc_stream(served, [_prompt(prompt)])
    assert len(out) == 1 and isinstance(out[0], dict), out  # not streaming: one response
    ref = reference.engine.generate(prompt, SamplingParams())
    assert out[0]["text_output"] == ref.text and not out[0]["text_output"].startswith(prompt)
    assert out[0]["num_output_tokens"] == len(ref.token_ids)
    echoed = _raw_grpc_stream(
        served,
        [
            _prompt(prompt),
            ("sampling_param_max_tokens", np.array([2], np.int32), "INT32"),
            ("sampling_param_exclude_input_from_output", np.array([False]), "BOOL"),
        ],
    )
    assert echoed[-1]["text_output"].startswith(prompt)


def test_inflight_batcher_names_over_grpc(served, reference):
    """The request GenAI-Perf's `kserve --backend tensorrtllm --streaming` mode sends, plus Triton's OpenAI
    frontend's `return_num_*` flags."""
    prompt = PROMPTS[0]
    ref = reference(prompt)
    out = _raw_grpc_stream(
        served,
        [
            _prompt(prompt),
            ("max_tokens", np.array([MAX_TOKENS], np.int32), "INT32"),
            ("exclude_input_in_output", np.array([True]), "BOOL"),
            ("stream", np.array([True]), "BOOL"),
            ("temperature", np.array([0.0], np.float32), "FP32"),
            ("top_p", np.array([1.0], np.float32), "FP32"),
            ("return_num_input_tokens", np.array([True]), "BOOL"),
            ("return_num_output_tokens", np.array([True]), "BOOL"),
        ],
    )
    assert all(isinstance(o, dict) for o in out) and len(out) >= 2  # streamed
    assert out[-1]["text_output"] == ref.text and out[-1]["num_output_tokens"] == len(ref.token_ids)
    assert out[-1]["num_input_tokens"] == ref.stats["prompt_tokens"]
    msg = _raw_grpc(served, [_prompt(prompt), ("presence_penalty", np.array([0.5], np.float32), "FP32")])
    assert "presence_penalty" in msg and "not supported" in msg
    msg = _raw_grpc(
        served,
        [
            _prompt(prompt),
            ("max_tokens", np.array([3], np.int32), "INT32"),
            ("sampling_param_max_tokens", np.array([4], np.int32), "INT32"),
        ],
    )
    assert "different values" in msg


def test_bad_requests_get_error_responses_and_server_stays_healthy(served):
    prompt = ("text_input", np.array([b"hello"], dtype=np.object_), "BYTES")
    msg = _raw_grpc(served, [("sampling_param_max_tokens", np.array([4], np.int32), "INT32")])
    assert "text_input" in msg
    msg = _raw_grpc(served, [prompt, ("sampling_param_max_tokens", np.array([4.0], np.float32), "FP32")])
    assert "sampling_param_max_tokens" in msg and (
        "FP32" in msg or "data-type" in msg or "datatype" in msg.lower()
    )
    msg = _raw_grpc(served, [("text_input", np.array([7], np.int32), "INT32")])
    assert "text_input" in msg
    for kw, what in (
        (dict(max_tokens=-1), "max_tokens"),
        (dict(temperature=1e6), "temperature"),
        (dict(top_p=0.0), "top_p"),
    ):
        for protocol, url in (("grpc", served.grpc), ("http", served.http)):
            with pytest.raises(clients.RequestRejected, match=what):
                clients.generate("hello", url=url, protocol=protocol, **kw)
    long_prompt = "word " * (2 * MAX_SEQ_LEN)
    with pytest.raises(clients.RequestRejected, match="max_seq_len"):
        clients.generate(long_prompt, url=served.grpc, protocol="grpc", max_tokens=4)
    assert clients.server_ready(served.http, "http") and clients.server_ready(served.grpc, "grpc")
    assert _wait_idle(served) < 5
    r = clients.generate("hello", url=served.grpc, protocol="grpc", max_tokens=2)
    assert r.finish_reason in ("length", "stop") and r.num_tokens >= 1


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_that_disconnects_mid_stream_frees_its_slot(served, protocol):
    url = served.grpc if protocol == "grpc" else served.http
    _wait_idle(served)  # earlier requests have released their slots
    s = clients.stream(
        "Once upon a time", url=url, protocol=protocol, max_tokens=MAX_SEQ_LEN - 16, ignore_eos=True
    )
    next(s)  # the request holds a slot and is generating
    assert _active(served) == 1
    s.close()  # drop the stream mid-way
    freed_after = _wait_idle(served, timeout=60)
    assert freed_after < 60
    r = clients.generate("hello", url=url, protocol=protocol, max_tokens=2)  # and the server still serves
    assert r.num_tokens >= 1


def test_stop_request_by_id_cancels(served):
    _wait_idle(served)
    msg = _raw_grpc(served, [("stop", np.array([True]), "BOOL")])  # no id: refused
    assert "request id" in msg
    import tritonclient.grpc as grpcclient

    # the stop stream is open before the request starts, so the stop follows its first token within a round trip
    # (a long generation on a fast host otherwise ends before a late stop arrives)
    c = grpcclient.InferenceServerClient(served.grpc)
    try:
        x = grpcclient.InferInput("stop", [1], "BOOL")
        x.set_data_from_numpy(np.array([True]))
        errors = []
        c.start_stream(callback=lambda result, error: errors.append(error))
        # sampled (not greedy): each iteration is several calls, so the 240 tokens take long enough for the stop
        # to arrive even when the prompt's prefix is cached and the host is quiet
        s = clients.TextStream(
            "for i in range(10):",
            url=served.grpc,
            protocol="grpc",
            max_tokens=MAX_SEQ_LEN - 16,
            ignore_eos=True,
            request_id="cancel-me",
            temperature=1.0,
            seed=3,
        )
        next(s)
        c.async_stream_infer("nemotron", [x], request_id="cancel-me")
        with pytest.raises(clients.RequestRejected, match="cancelled"):
            list(s)
    finally:
        c.stop_stream()
        c.close()
    _wait_idle(served)


def test_prefix_cache_is_on_by_default_and_reported(served, reference):
    """The packaged nemotron model reuses a repeated long prompt's blocks: same text, kv_cache_* outputs, gauges."""
    prompt = (
        "\n".join(f"def helper_{i}(x):\n    return x * {i} + {i % 7}" for i in range(9)) + "\ndef main():"
    )
    first = clients.generate(prompt, url=served.grpc, protocol="grpc", max_tokens=MAX_TOKENS, temperature=0.0)
    again = clients.generate(prompt, url=served.grpc, protocol="grpc", max_tokens=MAX_TOKENS, temperature=0.0)
    assert again.text == first.text == reference(prompt).text
    assert first.kv_cache_reused_block == 0 and again.kv_cache_reused_block >= 2
    assert 0 < again.kv_cache_hit_rate <= 1
    text = urllib.request.urlopen(served.metrics, timeout=10).read().decode()
    gauges = {
        ln.split("{")[0]: float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("nemotron_prefix_cache_")
    }
    assert gauges["nemotron_prefix_cache_reused_blocks"] >= again.kv_cache_reused_block
    assert 0 < gauges["nemotron_prefix_cache_used_bytes"] <= gauges["nemotron_prefix_cache_budget_bytes"]


def test_serve_stops_cleanly_on_sigint(served):
    served.proc.send_signal(signal.SIGINT)
    rc = served.proc.wait(60)
    assert rc == 0, served.log.read_text()[-3000:]
    host, port = served.http.rsplit(":", 1)
    assert port_free(host, int(port)) and port_free(host, int(served.grpc.rsplit(":", 1)[1]))
    leaked = _shm_regions() - served.shm_before
    assert not leaked, f"shared memory left behind: {leaked}"
    assert json.loads((served.repo / "manifest.json").read_text())["models"]["nemotron"]
