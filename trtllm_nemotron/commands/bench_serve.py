"""`trtllm-nemotron bench-serve`: load a Triton server with N concurrent streaming clients over M requests."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors


@click.command("bench-serve")
@click.option(
    "--url", default=None, help="A running server (host:port). Without it: Triton vs in-process on --engine."
)
@click.option(
    "--engine",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build/engine"),
    show_default=True,
    help="Engine dir for the Triton-vs-in-process comparison (used when no --url).",
)
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--model", default="nemotron", show_default=True)
@click.option(
    "-c",
    "--concurrency",
    "concurrency",
    type=int,
    multiple=True,
    default=(1, 8),
    show_default=True,
    help="Concurrent streaming clients (repeatable).",
)
@click.option(
    "-n",
    "--requests",
    type=click.IntRange(min=1),
    default=None,
    help="Requests per run, at each concurrency, with or without --url (default: 3 per client).",
)
@click.option(
    "--max-tokens", type=int, default=48, show_default=True, help="Tokens per request (EOS ignored)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@user_errors
def bench_serve(
    url: str | None,
    engine: Path,
    protocol: str,
    model: str,
    concurrency: tuple[int, ...],
    requests: int | None,
    max_tokens: int,
    as_json: bool,
) -> None:
    """Throughput, TTFT and inter-token latency percentiles under concurrent streaming load.

    With --url, load that server. Without, build nothing: package --engine, start a real tritonserver and
    compare it, the CLI and the in-process scheduler with the engine's own speed (`Engine.generate`,
    `generate_batch`) at each concurrency, ratios printed (`make bench-serve` runs interleaved rounds).
    """
    if url is not None:
        from clients.bench import run_load
        from triton_repo.bench import PROMPTS

        reports = []
        for c in concurrency:
            rep = run_load(
                list(PROMPTS),
                url=url,
                protocol=protocol,
                concurrency=c,
                requests=requests or 3 * c,
                max_tokens=max_tokens,
                model=model,
                label=f"triton {protocol}",
            )
            reports.append(rep.to_json())
            if not as_json:
                click.echo(rep.line())
        if as_json:
            click.echo(json.dumps(reports, indent=2))
        return
    from triton_repo.bench import BenchConfig, compare
    from trtllm_nemotron.errors import PackageError

    if not (engine / "build.json").is_file():
        raise PackageError(
            f"{engine} is not an engine dir; build it first (`make build-engine`) or pass --url"
        )
    result = compare(
        engine,
        BenchConfig(
            concurrencies=concurrency,
            requests=requests,
            max_tokens=max_tokens,
            protocols=(protocol,),
            rounds=1,
        ),
        echo=(lambda m: None) if as_json else click.echo,
    )
    if as_json:
        click.echo(json.dumps(result, indent=2))
