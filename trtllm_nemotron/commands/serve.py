"""`trtllm-nemotron serve REPO`: a real tritonserver on a model repository, in the foreground."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors


@click.command("serve")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes the server)."
)
@click.option(
    "--model", "models", multiple=True, help="Load only these models (default: all this host can run)."
)
@click.option(
    "--log-verbose", type=int, default=0, show_default=True, help="tritonserver --log-verbose level."
)
@click.option(
    "--startup-timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for readiness."
)
@click.option(
    "--openai-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Also serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models) on this port, "
    "as a client of the server's gRPC endpoint. Default: off (`make serve` uses 9000).",
)
@click.option(
    "--http-max-body-bytes",
    type=click.IntRange(min=1024),
    default=4 << 20,
    show_default=True,
    help="Largest HTTP request body accepted (larger: 413).",
)
@click.option("--no-restart", is_flag=True, help="Exit when tritonserver crashes instead of restarting it.")
@click.option(
    "--verbose", is_flag=True, help="Show all of tritonserver's output (startup tables, info lines)."
)
@user_errors
def serve(
    repo: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str,
    models: tuple[str, ...],
    log_verbose: int,
    startup_timeout: float,
    openai_port: int | None,
    http_max_body_bytes: int,
    no_restart: bool,
    verbose: bool,
) -> None:
    """Start tritonserver on REPO (explicit model control; loopback; Triton's default ports) until Ctrl-C.

    CPU hosts run the server shipped in the nvidia-pytriton wheel; GPU hosts NVIDIA's /opt/tritonserver.
    Models this host cannot run are skipped, with the reason. With --openai-port the OpenAI front starts
    beside it once it is ready. SIGINT/SIGTERM stop both cleanly; if tritonserver crashes, the cause is
    reported and it is restarted (unless --no-restart). The HTTP port is served by a guard that refuses
    oversized or malformed requests (docs/reliability.md).
    """
    from triton_repo.server import ServerConfig
    from triton_repo.server import serve as run_server

    cfg = ServerConfig(
        repo,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
        models=models or None,
        log_verbose=log_verbose,
        startup_timeout_s=startup_timeout,
        openai_port=openai_port,
        http_max_body_bytes=http_max_body_bytes,
    )
    rc = run_server(
        cfg,
        echo=lambda m: click.echo(m, err=True),
        restart=not no_restart,
        verbose=verbose or log_verbose > 0,
    )
    sys.exit(rc)
