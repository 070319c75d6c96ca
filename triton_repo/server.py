"""Start a real `tritonserver` on a model repository (`trtllm-nemotron serve REPO`, `make serve`).

Which binary:
- GPU hosts (NVIDIA's `tritonserver:<yy.mm>-trtllm-python-py3` container): `/opt/tritonserver/bin/tritonserver`
  with its own `/opt/tritonserver/backends`.
- Everywhere else: the Triton 2.51 server inside the `nvidia-pytriton` wheel. The wheel keeps the
  Python-backend stubs apart from the backend, so we assemble
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

Reliability (docs/reliability.md): the public HTTP port is served by `triton_repo.http_guard` (tritonserver's
own HTTP port is a private loopback one); the child gets a parent-death signal (SIGTERM when the thread that
started it dies, SIGKILL of `serve` included), so it never outlives `serve`; a busy port is explained by the
process holding it (`explain_port`); `serve` supervises the server: a crash is reported (signal, last log
lines) and the server restarted, unless `--no-restart`. Its output is quiet by default: warnings, errors and
crash reports, without the startup tables or the CUDA-driver complaints of a CPU host (`--verbose`: all).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triton_repo.http_guard import DEFAULT_MAX_BODY_BYTES, HttpGuard
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
    http_guard: bool = True  # the HTTP port is served by triton_repo.http_guard, tritonserver's is private
    http_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    openai_port: int | None = None  # the OpenAI front (triton_repo.openai_front) beside the server; None: off

    def __post_init__(self) -> None:
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3 or not all(0 < p < 65536 for p in ports):
            raise PackageError(
                f"HTTP, gRPC and metrics ports must be 3 distinct ports in 1..65535, got {ports}"
            )
        if self.http_max_body_bytes < 1024:
            raise PackageError(
                f"the HTTP request size limit must be >= 1024 bytes, got {self.http_max_body_bytes}"
            )
        if self.openai_port is not None and (self.openai_port in ports or not 0 < self.openai_port < 65536):
            raise PackageError(
                f"--openai-port must be a port in 1..65535 distinct from {ports}, got {self.openai_port}"
            )

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
        raise PackageError(
            f"nvidia-pytriton has no Python-backend stub for Python {pyver} ({stub}); use Python 3.8-3.13"
        )
    backends = cache_dir() / f"triton-backends-py{pyver}"
    files = [
        dist / "backends" / "python" / "libtriton_python.so",
        dist / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ]
    target = backends / "python"
    if all(
        (target / f.name).is_file() and (target / f.name).stat().st_size == f.stat().st_size for f in files
    ):
        return backends
    try:
        with atomic_dir(backends, replace=backends.exists()) as tmp:  # an outdated copy is replaced
            (tmp / "python").mkdir()
            for f in files:
                shutil.copy2(f, tmp / "python" / f.name)
    except OSError as e:
        if (target / stub.name).is_file():  # another process wrote it first: theirs is identical
            return backends
        raise PackageError(
            f"cannot write tritonserver's backend dir {backends} ({e}); set "
            f"${CACHE_ENV} to a writable directory"
        ) from e
    return backends


def find_tritonserver() -> TritonInstall:
    """The tritonserver to run on this host (see the module docstring); PackageError when there is none."""
    gpu = has_cuda_gpu()
    if (GPU_TRITON_HOME / "bin" / "tritonserver").is_file():
        return TritonInstall(
            GPU_TRITON_HOME / "bin" / "tritonserver",
            GPU_TRITON_HOME / "backends",
            None,
            {},
            source=str(GPU_TRITON_HOME),
            has_gpu=gpu,
        )
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise PackageError(
            "no tritonserver found: neither /opt/tritonserver (NVIDIA's container) nor the "
            "nvidia-pytriton wheel; install it with `pip install -e '.[serve]'`"
        )
    dist = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    libs = dist.parent.parent / "nvidia_pytriton.libs"
    binary = dist / "bin" / "tritonserver"
    if not binary.is_file():
        raise PackageError(f"nvidia-pytriton is installed but has no server binary at {binary}; reinstall it")
    pylibdir = sysconfig.get_config_var("LIBDIR") or ""
    ldso = sysconfig.get_config_var("LDLIBRARY") or ""
    if not (Path(pylibdir) / ldso).exists() or not ldso.endswith(".so") and ".so." not in ldso:
        raise PackageError(
            f"this Python has no shared libpython ({pylibdir}/{ldso}); the Python-backend stub "
            f"embeds one: use a Python built with --enable-shared"
        )
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(
            p for p in (pylibdir, str(libs), os.environ.get("LD_LIBRARY_PATH", "")) if p
        ),
        "PATH": os.pathsep.join((str(Path(sys.prefix) / "bin"), os.environ.get("PATH", ""))),
    }
    return TritonInstall(
        binary,
        _pytriton_backend_dir(dist),
        dist / "caches",
        env,
        source="nvidia-pytriton wheel (Triton 2.51)",
        has_gpu=gpu,
    )


def plan_models(
    repo: Path, install: TritonInstall, wanted: tuple[str, ...] | None = None
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
                skipped[name] = (
                    "the tensorrt_llm package is not importable (run inside NVIDIA's trtllm container)"
                )
            else:
                load.append(name)
        else:
            load.append(name)
    if not load:
        raise PackageError(
            f"no model in {repo} can run on this host: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
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


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    return inodes


def port_holder(port: int) -> dict | None:
    """{pid, ppid, comm, cmdline} of the process listening on TCP `port`, when this user can see it."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not inodes:
        return None
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                stat = (proc / "stat").read_text()
                return {
                    "pid": int(proc.name),
                    "ppid": int(stat.rsplit(")", 1)[1].split()[1]),
                    "comm": (proc / "comm").read_text().strip(),
                    "cmdline": (proc / "cmdline").read_bytes().decode(errors="replace").split("\0"),
                }
        except OSError:
            continue
    return None


def explain_port(host: str, port: int) -> str:
    """Why `port` is busy, naming the process when it is ours (a tritonserver or a `serve`) and how to free it."""
    who = port_holder(port)
    if who is None:
        return f"port {port} on {host} is in use by another program (or another user's)"
    pid, cmd = who["pid"], who["cmdline"]
    if who["comm"] == "tritonserver":
        repo = next((a.split("=", 1)[1] for a in cmd if a.startswith("--model-repository=")), "?")
        parent = _cmdline(who["ppid"])
        if who["ppid"] == 1 or "serve" not in parent:
            return (
                f"port {port} is held by tritonserver pid {pid} (model repository {repo}), left running by an "
                f"earlier `trtllm-nemotron serve` that was killed; stop it with `kill {pid}`"
            )
        return (
            f"port {port} is held by tritonserver pid {pid} (model repository {repo}) of a running "
            f"`trtllm-nemotron serve` (pid {who['ppid']}); stop that with Ctrl-C or `kill {who['ppid']}`"
        )
    if any("trtllm_nemotron" in a or "trtllm-nemotron" in a for a in cmd) and "serve" in cmd:
        return (
            f"port {port} is held by a running `trtllm-nemotron serve` (pid {pid}); stop it with Ctrl-C or "
            f"`kill {pid}`"
        )
    return f"port {port} on {host} is in use by {who['comm']} (pid {pid})"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


_PR_SET_PDEATHSIG = 1
_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGTERM when the thread that started it dies (any way,
    SIGKILL included), and exit at once if that already happened. None where prctl does not exist."""
    if _prctl is None:
        return None

    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


_GLOG = re.compile(r"^[IWEF]\d{4} ")
_CPU_NOISE = ("CudaDriverHelper has not been initialized", "Unable to allocate pinned system memory")


def quiet_filter(line: str, *, has_gpu: bool) -> bool:
    """Whether a tritonserver log line is shown by default (`serve` without --verbose): warnings and errors
    and anything that is not a glog line or a startup table (crash reports, Python tracebacks), minus the
    CUDA-driver complaints every CPU host gets."""
    if not line.strip() or line.startswith(("+", "|")):
        return False
    if _GLOG.match(line):
        return line[0] in "WEF" and (has_gpu or not any(n in line for n in _CPU_NOISE))
    return True


def describe_exit(rc: int) -> str:
    """'killed by SIGSEGV (signal 11)' / 'exit status 3' for a Popen return code."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"killed by {name} (signal {-rc})"
    return f"exit status {rc}"


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
    """A tritonserver child process (and the HTTP guard on the public HTTP port). Use as a context manager,
    or `start()` / `stop()`; `restart()` after a crash.

    The server's output is read by a thread: kept in `log_path` (when given), its last lines in memory (for
    crash reports), and passed to `echo` (when given; `verbose=False` shows only `quiet_filter` lines).
    The child gets a parent-death signal: it is stopped when the thread that started it dies, even by SIGKILL.
    """

    def __init__(
        self,
        cfg: ServerConfig,
        *,
        log_path: Path | None = None,
        install: TritonInstall | None = None,
        echo: Callable[[str], None] | None = None,
        verbose: bool = True,
    ):
        self.cfg = cfg
        self.install = install or find_tritonserver()
        self.log_path = log_path
        self.echo, self.verbose = echo, verbose
        self.proc: subprocess.Popen | None = None
        self.loaded, self.skipped = plan_models(Path(cfg.repo), self.install, cfg.models)
        self._shm_before: set[Path] = set()
        self._envs_before: set[Path] = set()
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._pump: threading.Thread | None = None
        self.guard: HttpGuard | None = None
        self.upstream_http_port = cfg.http_port

    def command(self) -> list[str]:
        c, inst = self.cfg, self.install
        http_host = "127.0.0.1" if c.http_guard else c.host
        cmd = [
            str(inst.binary),
            f"--model-repository={Path(c.repo).resolve()}",
            f"--backend-directory={inst.backend_dir}",
            f"--http-address={http_host}",
            f"--http-port={self.upstream_http_port}",
            f"--grpc-address={c.host}",
            f"--grpc-port={c.grpc_port}",
            f"--metrics-address={c.host}",
            f"--metrics-port={c.metrics_port}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={c.exit_timeout_s}",
            f"--log-verbose={c.log_verbose}",
            "--model-control-mode=explicit",
        ]
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
            raise PackageError(
                "; ".join(explain_port(c.host, p) for p in busy)
                + ". Or pass other --http-port/--grpc-port/--metrics-port"
            )
        if c.http_guard:
            self.upstream_http_port = free_ports(1)[0]
            try:
                self.guard = HttpGuard(
                    c.host,
                    c.http_port,
                    ("127.0.0.1", self.upstream_http_port),
                    max_body_bytes=c.http_max_body_bytes,
                ).start()
            except OSError as e:
                raise PackageError(
                    f"cannot listen on {c.host}:{c.http_port} ({e.strerror}); "
                    f"{explain_port(c.host, c.http_port)}"
                ) from e
        try:
            self._launch()
            self.wait_ready(c.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self) -> None:
        self._shm_before = _shm_regions()
        self._envs_before = _python_envs()
        env = {**os.environ, **self.install.env}
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
        )
        self._pump = threading.Thread(
            target=self._read_output, args=(self.proc,), name="tritonserver-log", daemon=True
        )
        self._pump.start()

    def _read_output(self, proc: subprocess.Popen) -> None:
        log = open(self.log_path, "ab") if self.log_path is not None else None  # noqa: SIM115 - closed below
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                if log is not None:
                    log.write(raw)
                    log.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                self._tail.append(line)
                if self.echo is not None and (
                    self.verbose or quiet_filter(line, has_gpu=self.install.has_gpu)
                ):
                    self.echo(line)
        finally:
            if log is not None:
                log.close()

    def log_tail(self, n: int = 40) -> str:
        """The server's last `n` output lines (what a crash report shows)."""
        if self._pump is not None:
            self._pump.join(2)  # the pipe drains once the server is gone
        lines = [ln for ln in self._tail if ln.strip() and not ln.startswith(("+", "|"))]  # no startup tables
        return "\n".join(lines[-n:]) or "(no output)"

    def wait_ready(self, timeout_s: float) -> None:
        url = f"http://{self.cfg.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            rc = self.proc.poll()
            if rc is not None:
                raise PackageError(
                    f"tritonserver exited ({describe_exit(rc)}) before it was ready "
                    f"(models {self.loaded}). Last lines of its log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise PackageError(
            f"tritonserver was not ready after {timeout_s:.0f} s (models {self.loaded}). "
            f"Last lines of its log:\n{self.log_tail()}"
        )

    def restart(self) -> None:
        """Start tritonserver again after it died (same ports; the guard keeps the HTTP port meanwhile)."""
        self._stop_process()
        self._tail.clear()
        self._launch()
        self.wait_ready(self.cfg.startup_timeout_s)

    def _stop_process(self, grace_s: float = 30.0) -> int | None:
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
        if self._pump is not None:
            self._pump.join(5)
            self._pump = None
        return rc

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM, wait `grace_s`, then SIGKILL the process group; remove this server's leftover shm; close
        the HTTP guard."""
        rc = self._stop_process(grace_s)
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
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


MAX_RESTARTS = 5  # crashes within RESTART_WINDOW_S before `serve` gives up
RESTART_WINDOW_S = 600.0


def serve(cfg: ServerConfig, *, echo=print, restart: bool = True, verbose: bool = False) -> int:
    """Run tritonserver in the foreground until SIGINT/SIGTERM (forwarded to it); returns the exit status.

    Supervised: when tritonserver dies on its own, the cause (signal or status, last log lines) is reported
    and it is started again (`restart=False`: `serve` exits with 128 + the signal, or the status). More than
    MAX_RESTARTS crashes within RESTART_WINDOW_S end `serve` too.
    """
    server = TritonServer(cfg, echo=echo, verbose=verbose)
    echo(f"tritonserver: {server.install.source} ({server.install.binary})")
    echo(f"loading: {', '.join(server.loaded)}")
    for name, why in server.skipped.items():
        echo(f"skipped: {name}: {why}")
    stop_requested: list[int] = []

    def forward(signum, _frame):
        stop_requested.append(signum)
        if server.proc is not None and server.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    crashes: list[float] = []
    front = None
    try:
        if cfg.openai_port is not None and not port_free(cfg.host, cfg.openai_port):
            raise PackageError(f"--openai-port {cfg.openai_port} on {cfg.host} is in use; pick another port")
        server.start()
        echo(f"ready: HTTP {cfg.http_url}  gRPC {cfg.grpc_url}  metrics {cfg.metrics_url}")
        echo(f'try:   trtllm-nemotron generate --url {cfg.grpc_url} --stream "def fibonacci(n):"')
        if cfg.openai_port is not None and not stop_requested:
            from triton_repo.openai_front.launch import OpenAIFront, repo_engine_dir

            front = OpenAIFront(
                grpc_url=cfg.grpc_url,
                engine_dir=repo_engine_dir(cfg.repo),
                host=cfg.host,
                port=cfg.openai_port,
            ).start()
            echo(f"ready: OpenAI API {front.url}/v1 (models: nemotron)")
        while True:
            while server.proc is not None and server.proc.poll() is None and not stop_requested:
                if front is not None and front.proc is not None and front.proc.poll() is not None:
                    front_rc = front.proc.returncode
                    echo(f"the OpenAI front exited with status {front_rc}; stopping tritonserver")
                    front.stop()
                    server.stop()
                    return front_rc or 1
                time.sleep(0.2)
            if stop_requested or server.proc is None:
                if front is not None:
                    front.stop()
                server.stop()
                return 0
            rc = server.proc.returncode
            echo(f"tritonserver crashed: {describe_exit(rc)}. Last lines of its log:\n{server.log_tail(20)}")
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < RESTART_WINDOW_S] + [now]
            if not restart or len(crashes) > MAX_RESTARTS:
                why = "--no-restart" if not restart else f"{len(crashes)} crashes in {RESTART_WINDOW_S:.0f} s"
                echo(f"not restarting ({why}); exiting")
                server.stop()
                return 128 - rc if rc < 0 else (rc or 1)
            echo(f"restarting tritonserver (crash {len(crashes)}; `serve --no-restart` exits instead)")
            try:
                server.restart()  # same ports: the OpenAI front (a gRPC client) keeps working
            except PackageError:
                if stop_requested:
                    return 0
                raise
            echo(f"ready again: HTTP {cfg.http_url}  gRPC {cfg.grpc_url}")
    finally:
        if front is not None:
            front.stop()
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)
