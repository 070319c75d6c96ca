"""Start a real `tritonserver` on a model repository (`trtllm-nemotron serve REPO`, `make serve`).

Which binary:
- GPU hosts (NVIDIA's `tritonserver:<yy.mm>-trtllm-python-py3` container): `/opt/tritonserver/bin/tritonserver`
  with its own `/opt/tritonserver/backends`.
- Everywhere else: the Triton 2.51 server inside the `nvidia-pytriton` wheel, run as measured in
  `specs/triton_server_cpu.md`: the wheel keeps the Python-backend stubs apart from the backend, so we assemble
  a backend dir (`libtriton_python.so`, `triton_python_backend_utils.py` and the stub for this Python) in a
  cache dir; `LD_LIBRARY_PATH` puts this interpreter's libpython first, then `nvidia_pytriton.libs` (the copied
  stub's `$ORIGIN` RPATH no longer resolves); `PATH` starts with this venv's `bin` so the embedded interpreter
  finds `pyvenv.cfg` and the venv's site-packages (numpy < 2, torch, this project).

What it loads: explicit model control, only the models this host can run. `nemotron` (our runtime) runs
anywhere; `tensorrt_llm` needs a CUDA GPU, the `tensorrt_llm` package and NVIDIA's model.py/helpers.py in
`tensorrt_llm/1/`. Skipped models are reported with the reason. The server binds loopback by default
(Triton's ports 8000 HTTP / 8001 gRPC / 8002 metrics), is awaited until `/v2/health/ready` (strict
readiness: every loaded model ready), and is stopped with SIGTERM (then SIGKILL after a grace period) with
`--exit-timeout-secs 5`. Afterwards what is left of its process group is killed (stubs orphaned by a crashed
server ignore SIGTERM) and the `/dev/shm/triton_python_backend_shm_region_*` segments and `/tmp/python_env_*`
dirs it created are removed (only when no other tritonserver is running).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from triton_repo.package import TRTLLM_FILES, TRTLLM_MODEL, repo_models
from trtllm_nemotron.errors import PackageError
from trtllm_nemotron.fileio import CACHE_ENV, atomic_dir, cache_dir

GPU_TRITON_HOME = Path("/opt/tritonserver")
_SHM_GLOB = "triton_python_backend_shm_region_*"


@dataclass(frozen=True)
class ServerConfig:
    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"  # loopback unless told (0.0.0.0 to expose)
    models: tuple[str, ...] | None = None  # None: every model this host can run
    exit_timeout_s: int = 5
    log_verbose: int = 0
    startup_timeout_s: float = 300.0
    extra_args: tuple[str, ...] = ()
    openai_port: int | None = None  # the OpenAI front (triton_repo.openai_front) beside the server; None: off

    def __post_init__(self) -> None:
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise PackageError(f"HTTP, gRPC and metrics ports must be 3 distinct ports in 1..65535, got {ports}")
        if self.openai_port is not None and (self.openai_port in ports or not 0 < self.openai_port < 65536):
            raise PackageError(f"--openai-port must be a port in 1..65535 distinct from {ports}, "
                               f"got {self.openai_port}")

    @property
    def http_url(self) -> str:
        return f"{_client_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.metrics_port}/metrics"


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


@dataclass(frozen=True)
class TritonInstall:
    """A runnable tritonserver: binary, backend dir, extra environment, and where it came from."""

    binary: Path
    backend_dir: Path
    cache_dir: Path | None
    env: dict[str, str] = field(default_factory=dict)
    source: str = ""
    has_gpu: bool = False


def has_cuda_gpu() -> bool:
    """A CUDA device node is present (no torch import: the server process decides, this is for planning)."""
    return Path("/dev/nvidiactl").exists() and any(Path("/dev").glob("nvidia[0-9]*"))


def _pytriton_backend_dir(dist: Path) -> Path:
    """The python backend dir with this interpreter's stub copied in (cached; built atomically)."""
    pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / pyver / "triton_python_backend_stub"
    if not stub.is_file():
        raise PackageError(f"nvidia-pytriton has no Python-backend stub for Python {pyver} ({stub}); "
                           f"use Python 3.8-3.13")
    backends = cache_dir() / f"triton-backends-py{pyver}"
    files = [dist / "backends" / "python" / "libtriton_python.so",
             dist / "backends" / "python" / "triton_python_backend_utils.py", stub]
    target = backends / "python"
    if all((target / f.name).is_file() and (target / f.name).stat().st_size == f.stat().st_size for f in files):
        return backends
    try:
        with atomic_dir(backends, replace=backends.exists()) as tmp:  # an outdated copy is replaced
            (tmp / "python").mkdir()
            for f in files:
                shutil.copy2(f, tmp / "python" / f.name)
    except OSError as e:
        if (target / stub.name).is_file():  # another process wrote it first: theirs is identical
            return backends
        raise PackageError(f"cannot write tritonserver's backend dir {backends} ({e}); set "
                           f"${CACHE_ENV} to a writable directory") from e
    return backends


def find_tritonserver() -> TritonInstall:
    """The tritonserver to run on this host (see the module docstring); PackageError when there is none."""
    gpu = has_cuda_gpu()
    if (GPU_TRITON_HOME / "bin" / "tritonserver").is_file():
        return TritonInstall(GPU_TRITON_HOME / "bin" / "tritonserver", GPU_TRITON_HOME / "backends", None, {},
                             source=str(GPU_TRITON_HOME), has_gpu=gpu)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise PackageError("no tritonserver found: neither /opt/tritonserver (NVIDIA's container) nor the "
                           "nvidia-pytriton wheel; install it with `pip install -e '.[serve]'`")
    dist = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        raise PackageError(f"nvidia-pytriton is installed but has no server binary at {binary}; reinstall it")
    pylibdir = sysconfig.get_config_var("LIBDIR") or ""
    ldso = sysconfig.get_config_var("LDLIBRARY") or ""
    if not (Path(pylibdir) / ldso).exists() or not ldso.endswith(".so") and ".so." not in ldso:
        raise PackageError(f"this Python has no shared libpython ({pylibdir}/{ldso}); the Python-backend stub "
                           f"embeds one: use a Python built with --enable-shared")
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(p for p in (pylibdir, str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p),
        "PATH": os.pathsep.join((str(Path(sys.prefix) / "bin"), os.environ.get("PATH", ""))),
    }
    return TritonInstall(binary, _pytriton_backend_dir(dist), dist / "caches", env,
                         source="nvidia-pytriton wheel (Triton 2.51)", has_gpu=gpu)


def plan_models(repo: Path, install: TritonInstall, wanted: tuple[str, ...] | None = None
                ) -> tuple[list[str], dict[str, str]]:
    """(models to load, {skipped model: reason}) for this host."""
    available = repo_models(repo)
    if wanted:
        unknown = [m for m in wanted if m not in available]
        if unknown:
            raise PackageError(f"models {unknown} are not in {repo} (it has {available})")
    load: list[str] = []
    skipped: dict[str, str] = {}
    for name in wanted or available:
        if name == TRTLLM_MODEL:
            missing = [f for f in TRTLLM_FILES if not (repo / name / "1" / f).is_file()]
            if not install.has_gpu:
                skipped[name] = "needs a CUDA GPU (TensorRT-LLM's PyTorch backend); this host has none"
            elif missing:
                skipped[name] = f"{missing} missing in {repo / name / '1'}: NVIDIA's code, see its README.md"
            elif importlib.util.find_spec("tensorrt_llm") is None:
                skipped[name] = "the tensorrt_llm package is not importable (run inside NVIDIA's trtllm container)"
            else:
                load.append(name)
        else:
            load.append(name)
    if not load:
        raise PackageError(f"no model in {repo} can run on this host: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return load, skipped


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_client_host(host), port))
        except OSError:
            return False
    return True


def free_ports(n: int = 3) -> list[int]:
    """`n` distinct free TCP ports on loopback (for tests and benchmarks)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _shm_regions() -> set[Path]:
    return set(Path("/dev/shm").glob(_SHM_GLOB)) if Path("/dev/shm").is_dir() else set()


def _python_envs() -> set[Path]:
    """The stub's `/tmp/python_env_*` dirs (left behind when a server is killed)."""
    return set(Path(tempfile.gettempdir()).glob("python_env_*"))


def _other_tritonservers(exclude_pid: int | None) -> bool:
    for p in Path("/proc").glob("[0-9]*"):
        try:
            if (p / "comm").read_text().strip() == "tritonserver" and int(p.name) != exclude_pid:
                return True
        except OSError:
            continue
    return False


def _reap_group(pgid: int, wait_s: float = 3.0) -> None:
    """SIGKILL what is left of the server's process group once the server is gone.

    Python-backend stubs live in the server's group and exit on their own within ~0.5 s of a clean stop;
    after a server crash they are orphaned and ignore SIGTERM, holding their model's memory.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class TritonServer:
    """A tritonserver child process. Use as a context manager, or `start()` / `stop()`.

    `log_path=None` passes the server's output through to this process's stdout/stderr.
    """

    def __init__(self, cfg: ServerConfig, *, log_path: Path | None = None, install: TritonInstall | None = None):
        self.cfg = cfg
        self.install = install or find_tritonserver()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.loaded, self.skipped = plan_models(Path(cfg.repo), self.install, cfg.models)
        self._shm_before: set[Path] = set()
        self._envs_before: set[Path] = set()
        self._log_file: IO[bytes] | None = None

    def command(self) -> list[str]:
        c, inst = self.cfg, self.install
        cmd = [str(inst.binary), f"--model-repository={Path(c.repo).resolve()}", f"--backend-directory={inst.backend_dir}",
               f"--http-address={c.host}", f"--http-port={c.http_port}", f"--grpc-address={c.host}",
               f"--grpc-port={c.grpc_port}", f"--metrics-address={c.host}", f"--metrics-port={c.metrics_port}",
               "--strict-readiness=true", "--exit-on-error=true", f"--exit-timeout-secs={c.exit_timeout_s}",
               f"--log-verbose={c.log_verbose}", "--model-control-mode=explicit"]
        cmd += [f"--load-model={m}" for m in self.loaded]
        if inst.cache_dir is not None:
            cmd.append(f"--cache-directory={inst.cache_dir}")
        if not inst.has_gpu:
            cmd += ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]
        return cmd + list(c.extra_args)

    def start(self) -> TritonServer:
        c = self.cfg
        busy = [p for p in (c.http_port, c.grpc_port, c.metrics_port) if not port_free(c.host, p)]
        if busy:
            raise PackageError(f"ports {busy} on {c.host} are in use (another tritonserver?); stop it or pass "
                               f"--http-port/--grpc-port/--metrics-port")
        self._shm_before = _shm_regions()
        self._envs_before = _python_envs()
        env = {**os.environ, **self.install.env}
        if self.log_path is not None:
            self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        out = self._log_file if self._log_file is not None else None
        self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready(c.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not Path(self.log_path).exists():
            return "(server output went to the terminal)"
        lines = Path(self.log_path).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_ready(self, timeout_s: float) -> None:
        url = f"http://{self.cfg.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            rc = self.proc.poll()
            if rc is not None:
                raise PackageError(f"tritonserver exited with status {rc} before it was ready "
                                   f"(models {self.loaded}). Last lines of its log:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise PackageError(f"tritonserver was not ready after {timeout_s:.0f} s (models {self.loaded}). "
                           f"Last lines of its log:\n{self._log_tail()}")

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM, wait `grace_s`, then SIGKILL the process group; remove this server's leftover shm."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            rc = self.proc.returncode
            pid = self.proc.pid
            self.proc = None
            _reap_group(pid)
            self.cleanup_shm(pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return rc

    def cleanup_shm(self, pid: int | None = None) -> list[Path]:
        """Remove the Python-backend shm segments and stub env dirs this server left (never while another
        server runs)."""
        time.sleep(0.2)  # stubs exit shortly after the server
        if _other_tritonservers(pid):
            return []
        removed = []
        for p in _shm_regions() - self._shm_before:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
        for p in _python_envs() - self._envs_before:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        return removed

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(cfg: ServerConfig, *, echo=print) -> int:
    """Run tritonserver in the foreground until SIGINT/SIGTERM (forwarded to it); returns its exit status."""
    server = TritonServer(cfg)
    echo(f"tritonserver: {server.install.source} ({server.install.binary})")
    echo(f"loading: {', '.join(server.loaded)}")
    for name, why in server.skipped.items():
        echo(f"skipped: {name}: {why}")
    stop_requested = []

    def forward(signum, _frame):
        stop_requested.append(signum)
        if server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    front = None
    try:
        if cfg.openai_port is not None and not port_free(cfg.host, cfg.openai_port):
            raise PackageError(f"--openai-port {cfg.openai_port} on {cfg.host} is in use; pick another port")
        server.start()
        echo(f"ready: HTTP {cfg.http_url}  gRPC {cfg.grpc_url}  metrics {cfg.metrics_url}")
        echo(f"try:   trtllm-nemotron generate --url {cfg.grpc_url} --stream \"def fibonacci(n):\"")
        if cfg.openai_port is not None and not stop_requested:
            from triton_repo.openai_front.launch import OpenAIFront, repo_engine_dir

            front = OpenAIFront(grpc_url=cfg.grpc_url, engine_dir=repo_engine_dir(cfg.repo), host=cfg.host,
                                port=cfg.openai_port).start()
            echo(f"ready: OpenAI API {front.url}/v1 (models: nemotron)")
        while server.proc is not None and server.proc.poll() is None and not stop_requested:
            if front is not None and front.proc is not None and front.proc.poll() is not None:
                echo(f"the OpenAI front exited with status {front.proc.returncode}; stopping tritonserver")
                break
            time.sleep(0.2)
        if front is not None:
            front.stop()
        rc = server.stop()
        return 0 if stop_requested else (rc or 0)
    finally:
        if front is not None:
            front.stop()
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)
