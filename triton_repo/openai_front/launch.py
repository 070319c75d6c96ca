"""The OpenAI front as a child process beside tritonserver (`serve REPO --openai-port P`, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from trtllm_nemotron.errors import PackageError


def repo_engine_dir(repo: Path) -> Path:
    """The engine dir the repository's `nemotron` model serves (from the repository's manifest.json)."""
    manifest = Path(repo) / "manifest.json"
    try:
        ref = json.loads(manifest.read_text())["models"]["nemotron"]["engine_dir"]
    except (OSError, ValueError, KeyError) as e:
        raise PackageError(
            f"{repo} has no nemotron model in manifest.json ({e}); the OpenAI front needs the "
            f"repository written by `trtllm-nemotron package`"
        ) from e
    p = Path(ref)
    return p if p.is_absolute() else (Path(repo) / "nemotron" / p).resolve()


class OpenAIFront:
    """`python -m triton_repo.openai_front` as a child process; `start()` waits until `/health` answers 200."""

    def __init__(
        self,
        *,
        grpc_url: str,
        engine_dir: Path,
        host: str = "127.0.0.1",
        port: int = 9000,
        log_path: Path | None = None,
    ) -> None:
        self.grpc_url, self.engine_dir, self.host, self.port = grpc_url, Path(engine_dir), host, port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> OpenAIFront:
        cmd = [
            sys.executable,
            "-m",
            "triton_repo.openai_front",
            "--grpc-url",
            self.grpc_url,
            "--engine-dir",
            str(self.engine_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        from triton_repo.server import die_with_parent  # dies with `serve`, even on SIGKILL

        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=die_with_parent(os.getpid()),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.stop()
                raise PackageError(
                    f"the OpenAI front exited with status {rc} before it was ready"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PackageError(f"the OpenAI front at {self.url} was not healthy after {timeout_s:.0f} s")

    def stop(self, grace_s: float = 10.0) -> int | None:
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
                    self.proc.wait(5)
            rc = self.proc.returncode
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def __enter__(self) -> OpenAIFront:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
