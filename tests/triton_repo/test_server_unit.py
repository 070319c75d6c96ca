"""Server plumbing without starting Triton: the install found on this host, the command line, port checks,
and the reaping of a crashed server's orphaned process group."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from triton_repo.package import package
from triton_repo.server import ServerConfig, TritonServer, _reap_group, find_tritonserver, free_ports
from trtllm_nemotron.errors import PackageError


def test_cpu_install_is_the_pytriton_server_with_the_recipe_env():
    inst = find_tritonserver()
    if Path("/opt/tritonserver/bin/tritonserver").is_file():
        pytest.skip("GPU container: /opt/tritonserver is used instead")
    assert inst.binary.name == "tritonserver" and inst.binary.is_file()
    pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (inst.backend_dir / "python" / "triton_python_backend_stub").is_file(), pyver
    assert (inst.backend_dir / "python" / "libtriton_python.so").is_file()
    ld = inst.env["LD_LIBRARY_PATH"].split(":")
    assert ld[0] == sysconfig.get_config_var("LIBDIR") and ld[1].endswith("nvidia_pytriton.libs")
    assert inst.env["PATH"].split(":")[0] == str(Path(sys.prefix) / "bin")


def test_command_line_binds_loopback_and_loads_explicitly(cpu_engine, tmp_path):
    repo = package(cpu_engine, tmp_path / "repo")
    h, g, m = free_ports(3)
    server = TritonServer(ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m))
    cmd = " ".join(server.command())
    for flag in (
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--model-control-mode=explicit",
        "--load-model=nemotron",
        f"--grpc-port={g}",
        "--exit-timeout-secs=5",
        "--strict-readiness=true",
    ):
        assert flag in cmd
    assert server.loaded == ["nemotron"] and server.skipped == {}
    with pytest.raises(PackageError, match="not in"):
        TritonServer(ServerConfig(repo, models=("nope",)))


def test_busy_port_and_bad_port_sets_are_refused(cpu_engine, tmp_path):
    with pytest.raises(PackageError, match="distinct"):
        ServerConfig(tmp_path, http_port=8000, grpc_port=8000)
    repo = package(cpu_engine, tmp_path / "repo")
    h, g, m = free_ports(3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", g))
        s.listen()
        with pytest.raises(
            PackageError, match=rf"port {g} on 127.0.0.1 is in use by python \(pid {os.getpid()}\)"
        ):
            TritonServer(ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m)).start()


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie: this container's init may not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_orphans_of_a_dead_server_are_reaped():
    # a group leader that exits at once, leaving a child that ignores SIGTERM (like an orphaned stub)
    code = (
        "import subprocess, sys; "
        "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']); print(c.pid, flush=True)"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    child = int(leader.stdout.readline())
    leader.wait(10)
    assert _alive(child)
    _reap_group(leader.pid, wait_s=0.5)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
