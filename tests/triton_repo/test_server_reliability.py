"""A server that no request can take down (issue 14), on a real tritonserver started by `trtllm-nemotron serve`.

Oversized and form-encoded bodies (a ~5 MB `curl -d` body segfaulted the bundled Triton 2.51), malformed JSON,
out-of-range integers and fuzzed HTTP bodies and gRPC tensors (hypothesis) get 4xx / error responses and the
server stays ready; a crashed tritonserver is reported with its signal and restarted (or, with --no-restart,
ends `serve`); a port held by an earlier instance is explained; SIGKILL of `serve` frees its ports.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clients
from tests.triton_repo.conftest import assemble_engine
from triton_repo.package import PackageConfig, package
from triton_repo.protocol import NEMOTRON_INPUTS
from triton_repo.server import ServerConfig, TritonServer, explain_port, free_ports, port_free, port_holder

# real tritonservers (make test runs it; -m "not slow" skips it in a quick loop)
pytestmark = pytest.mark.slow

MAX_SEQ_LEN = 128
FIVE_MB = 5 * 1000 * 1000
# fixed examples (derandomize), no example database written into the checkout
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


@dataclass
class Serve:
    proc: subprocess.Popen
    log: Path
    repo: Path
    http: str
    grpc: str
    ports: tuple[int, int, int]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_serve(repo: Path, log: Path, *extra: str) -> Serve:
    h, g, m = free_ports(3)
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trtllm_nemotron",
                "serve",
                str(repo),
                "--http-port",
                str(h),
                "--grpc-port",
                str(g),
                "--metrics-port",
                str(m),
                *extra,
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    s = Serve(proc, log, repo, f"127.0.0.1:{h}", f"127.0.0.1:{g}", (h, g, m))
    wait_ready(s)
    return s


def wait_ready(s: Serve, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not clients.server_ready(s.http, "http", timeout=2):
        if s.proc.poll() is not None or time.monotonic() > deadline:
            s.proc.kill()
            pytest.fail(f"serve did not become ready (rc={s.proc.poll()}):\n{s.log_text()[-4000:]}")
        time.sleep(0.3)


def tritonserver_pid(s: Serve) -> int:
    who = port_holder(s.ports[1])  # the gRPC port is tritonserver's own
    assert who is not None and who["comm"] == "tritonserver" and who["ppid"] == s.proc.pid, who
    return who["pid"]


def post(
    s: Serve, path: str, body: bytes, content_type: str = "application/json", headers: dict | None = None
) -> tuple[int, str]:
    host, port = s.http.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        c.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def assert_ready(s: Serve) -> None:
    assert s.proc.poll() is None, s.log_text()[-3000:]
    assert clients.server_ready(s.http, "http") and clients.server_ready(s.grpc, "grpc")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    from builder.defaults import default_model_dir

    tmp = tmp_path_factory.mktemp("reliab")
    engine = assemble_engine(default_model_dir(), tmp / "engine")
    return package(
        engine, tmp / "repo", PackageConfig(max_batch_size=4, max_seq_len=MAX_SEQ_LEN, device="cpu")
    )


@pytest.fixture(scope="module")
def served(repo, tmp_path_factory):
    s = start_serve(repo, tmp_path_factory.mktemp("serve") / "serve.log")
    yield s
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGINT)
        try:
            s.proc.wait(60)
        except subprocess.TimeoutExpired:
            s.proc.kill()


GENERATE = "/v2/models/nemotron/generate"


def test_five_mb_form_encoded_body_gets_413_and_the_server_stays_ready(served):
    body = b"a" * FIVE_MB  # what `curl -d @file` sends: application/x-www-form-urlencoded
    for path in (GENERATE, "/v2/models/nemotron/generate_stream", "/v2/models/nemotron/infer"):
        status, text = post(served, path, body, "application/x-www-form-urlencoded")
        assert status == 413 and "--http-max-body-bytes" in text, (path, status, text)
        status, _ = post(served, path, body, "application/x-www-form-urlencoded", {"Expect": "100-continue"})
        assert status == 413
        assert_ready(served)
    # under the limit, a form-encoded body is parsed as the JSON it is (the crashing form decoding is skipped)
    prompt = json.dumps({"text_input": "word " * 600_000, "sampling_param_max_tokens": 2}).encode()
    status, text = post(served, GENERATE, prompt, "application/x-www-form-urlencoded")
    assert status == 400 and "max_seq_len" in text, text
    status, text = post(
        served,
        GENERATE,
        b'{"text_input": "def f(x):", "sampling_param_max_tokens": 2}',
        "application/x-www-form-urlencoded",
    )
    assert status == 200 and json.loads(text)["num_output_tokens"] == 2, text
    assert_ready(served)


@pytest.mark.parametrize(
    "body, match",
    [
        (b"{bad json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'["text_input", "hi"]', "must be a JSON object"),
        (b'{"text_input": "hi", "sampling_param_max_tokens": 2147483648}', "out of range for its type INT32"),
        (b'{"text_input": "hi", "sampling_param_top_k": -2147483649}', "out of range"),
        (b'{"text_input": "hi", "sampling_param_seed": -1}', "out of range for its type UINT64"),
        (b'{"text_input": ["a", "b"], "sampling_param_max_tokens": 2}', "one request per prompt"),
        (b'{"sampling_param_max_tokens": 2}', "text_input"),
    ],
)
def test_malformed_generate_requests_get_400(served, body, match):
    for path in (GENERATE, "/v2/models/nemotron/generate_stream"):
        status, text = post(served, path, body)
        assert status == 400 and match in text, (path, status, text)
    assert_ready(served)


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_names = st.sampled_from([t.name for t in NEMOTRON_INPUTS] + ["bogus", ""])


@FUZZ
@given(doc=st.dictionaries(_names, _json_values, max_size=6), stream=st.booleans())
def test_fuzzed_http_generate_bodies_never_get_5xx(served, doc, stream):
    doc.setdefault("sampling_param_max_tokens", 4)
    path = "/v2/models/nemotron/generate" + ("_stream" if stream else "")
    status, text = post(served, path, json.dumps(doc, allow_nan=True).encode())
    assert status < 500, (doc, status, text)


@FUZZ
@given(
    body=st.binary(max_size=2000),
    ctype=st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "text/plain",
            "multipart/form-data; boundary=x",
        ]
    ),
)
def test_fuzzed_raw_http_bodies_never_get_5xx(served, body, ctype):
    status, text = post(served, GENERATE, body, ctype)
    assert status < 500, (body[:100], status, text)


_DTYPES = {
    "BYTES": np.object_,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
    "BOOL": np.bool_,
    "UINT64": np.uint64,
}


@st.composite
def _tensor(draw):
    name = draw(_names.filter(bool))
    dtype = draw(st.sampled_from(sorted(_DTYPES)))
    n = draw(st.integers(0, 3))
    if dtype == "BYTES":
        arr = np.array(draw(st.lists(st.binary(max_size=30), min_size=n, max_size=n)), dtype=np.object_)
    elif dtype == "BOOL":
        arr = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.bool_)
    else:
        info = np.iinfo(_DTYPES[dtype]) if dtype != "FP32" else None
        ints = st.integers(int(info.min), int(info.max)) if info else st.floats(width=32, allow_nan=True)
        arr = np.array(draw(st.lists(ints, min_size=n, max_size=n)), dtype=_DTYPES[dtype])
    return name, arr, dtype


@FUZZ
@given(tensors=st.lists(_tensor(), max_size=5, unique_by=lambda t: t[0]))
def test_fuzzed_grpc_tensors_get_a_result_or_an_error(served, tensors):
    import queue

    import tritonclient.grpc as grpcclient

    names = {t[0] for t in tensors}
    if "text_input" in names and "sampling_param_max_tokens" not in names:
        tensors.append(("sampling_param_max_tokens", np.array([4], np.int32), "INT32"))
    c = grpcclient.InferenceServerClient(served.grpc)
    q: queue.Queue = queue.Queue()
    try:
        c.start_stream(callback=lambda result, error: q.put((result, error)))
        inputs = []
        for name, arr, dtype in tensors:
            x = grpcclient.InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(arr)
            inputs.append(x)
        try:
            c.async_stream_infer("nemotron", inputs, enable_empty_final_response=True)
        except Exception:  # refused by the client library itself (e.g. an empty BYTES tensor)
            return
        while True:  # responses until the final flag, or an error
            result, error = q.get(timeout=120)
            if error is not None:
                assert error.message(), "an error response carries a message"
                break
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        c.stop_stream()
        c.close()
    assert clients.server_ready(served.grpc, "grpc", timeout=10)


def test_a_five_mb_grpc_prompt_is_refused_and_the_server_stays_ready(served):
    with pytest.raises(clients.RequestRejected, match="max_seq_len"):
        clients.generate("a " * (FIVE_MB // 2), url=served.grpc, protocol="grpc", max_tokens=2, timeout=300)
    assert_ready(served)


def test_a_second_serve_on_the_same_ports_explains_who_holds_them(served):
    h, g, m = served.ports
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtllm_nemotron",
            "serve",
            str(served.repo),
            "--http-port",
            str(h),
            "--grpc-port",
            str(g),
            "--metrics-port",
            str(m),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert f"port {h} is held by a running `trtllm-nemotron serve` (pid {served.proc.pid})" in r.stderr, (
        r.stderr
    )
    assert f"port {g} is held by tritonserver pid {tritonserver_pid(served)}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_crashed_tritonserver_is_reported_and_restarted(served):
    pid = tritonserver_pid(served)
    os.kill(pid, signal.SIGSEGV)
    deadline = time.monotonic() + 300
    while "ready again" not in served.log_text():
        assert served.proc.poll() is None, served.log_text()[-3000:]
        assert time.monotonic() < deadline, served.log_text()[-3000:]
        time.sleep(0.3)
    log = served.log_text()
    assert "tritonserver crashed: killed by SIGSEGV (signal 11)" in log and "restarting tritonserver" in log
    assert tritonserver_pid(served) != pid
    r = clients.generate("def f(x):", url=served.http, protocol="http", max_tokens=2)
    assert r.num_tokens >= 1


def test_sigkill_of_serve_frees_its_ports_within_seconds(served):
    """Last in this module: the parent-death signal stops tritonserver when `serve` is killed outright."""
    child = tritonserver_pid(served)
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(10)
    deadline = time.monotonic() + 15
    while not all(port_free("127.0.0.1", p) for p in served.ports):
        assert time.monotonic() < deadline, f"ports still held: {[port_holder(p) for p in served.ports]}"
        time.sleep(0.2)
    while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
        assert time.monotonic() < deadline + 15, "tritonserver outlived serve"
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def test_no_restart_exits_with_the_crash_and_its_cause(repo, tmp_path):
    s = start_serve(repo, tmp_path / "serve.log", "--no-restart")
    try:
        os.kill(tritonserver_pid(s), signal.SIGSEGV)
        rc = s.proc.wait(120)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    log = s.log_text()
    assert rc == 128 + signal.SIGSEGV, log[-3000:]
    assert "tritonserver crashed: killed by SIGSEGV (signal 11)" in log, log[-3000:]
    assert "not restarting (--no-restart)" in log and "Last lines of its log" in log, log[-3000:]
    before = log.split("tritonserver crashed")[0]  # what serve showed until then: quiet by default
    assert "ready: HTTP" in before and "CudaDriverHelper" not in before, before
    assert not re.search(r"^(I\d{4} |\+-|\|)", before, re.M), before  # no info lines, no tables (--verbose)


def test_a_tritonserver_left_by_a_killed_serve_is_named(repo, tmp_path):
    """An orphaned tritonserver (its `serve` gone: here a shell that exited) holding the ports is explained."""
    h, g, m = free_ports(3)
    cfg = ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m, http_guard=False)
    server = TritonServer(cfg)
    env = {**os.environ, **server.install.env}
    cmd = " ".join(f"'{a}'" for a in server.command())
    sh = subprocess.run(
        ["sh", "-c", f"{cmd} >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,
    )
    pid = int(sh.stdout.strip())
    try:
        deadline = time.monotonic() + 120
        while port_free("127.0.0.1", g):
            assert time.monotonic() < deadline and Path(f"/proc/{pid}").exists()
            time.sleep(0.2)
        msg = explain_port("127.0.0.1", g)
        assert f"held by tritonserver pid {pid}" in msg and "left running by an earlier" in msg, msg
        assert f"kill {pid}" in msg and str(repo.resolve()) in msg
    finally:
        os.kill(pid, signal.SIGKILL)
