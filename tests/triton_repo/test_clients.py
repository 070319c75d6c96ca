"""Client library without a server: URL parsing, connection failures, result JSON, CLI exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

import clients
from clients.bench import percentile
from triton_repo.server import free_ports
from trtllm_nemotron.errors import ClientError


def test_parse_url():
    assert clients.parse_url("localhost", "grpc") == "localhost:8001"
    assert clients.parse_url("http://h:9000/", "http") == "h:9000"
    assert clients.parse_url("grpc://10.0.0.1:8001", "grpc") == "10.0.0.1:8001"
    with pytest.raises(ClientError, match="scheme"):
        clients.parse_url("https://h:1", "http")
    with pytest.raises(ClientError, match="protocol"):
        clients.parse_url("h:1", "websocket")
    for bad in ("h:99999", "h:0", "h:x", ":8001", "h:"):  # 99999 used to connect to 99999 % 65536 = 34463
        with pytest.raises(ClientError, match="port in 1..65535"):
            clients.parse_url(bad, "grpc")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_connection_failure_is_a_clear_error(protocol):
    port = free_ports(1)[0]
    with pytest.raises(ClientError, match=rf"cannot reach Triton at 127.0.0.1:{port} over {protocol}"):
        clients.generate("hi", url=f"127.0.0.1:{port}", protocol=protocol, timeout=10)
    assert not clients.server_ready(f"127.0.0.1:{port}", protocol)


def test_result_json_keys():
    r = clients.ClientResult(text="x", num_tokens=1)
    assert {"text", "num_tokens", "tokens_per_s", "ttft_s", "acceptance_rate", "acceptance_length"} <= set(
        r.to_json()
    )


def test_percentile():
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)


def test_cli_exit_status_on_connection_failure():
    port = free_ports(1)[0]
    out = subprocess.run(
        [sys.executable, "-m", "clients", "hi", "--url", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "cannot reach Triton" in out.stderr
    assert (
        "torch"
        not in subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, clients, clients.bench, clients.client; print(sorted(sys.modules))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
