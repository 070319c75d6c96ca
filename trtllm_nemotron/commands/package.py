"""`trtllm-nemotron package ENGINE --out REPO`: engine dir -> Triton model repository."""

from __future__ import annotations

from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors


@click.command("package")
@click.argument("engine", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("build/model_repository"),
    show_default=True,
    help="Model repository to write (replaced atomically).",
)
@click.option(
    "--max-batch-size",
    type=int,
    default=8,
    show_default=True,
    help="Engine slots of the nemotron model (the runtime's continuous batching).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the nemotron model runs (auto: CUDA when the server has a GPU).",
)
@click.option(
    "--mtp", type=int, default=None, help="MTP draft tokens for the nemotron model (default: the engine's)."
)
@click.option(
    "--max-seq-len", type=int, default=None, help="Context length of the nemotron model (default: runtime's)."
)
@click.option(
    "--stream-interval",
    type=int,
    default=1,
    show_default=True,
    help="Streamed responses at the first token, the last and every N-th iteration (TensorRT-LLM's "
    "stream_interval; larger = fewer responses at high load).",
)
@click.option("--copy-engine", is_flag=True, help="Copy the engine into the repository (self-contained).")
@click.option(
    "--prefix-cache-mb",
    type=click.FloatRange(min=0),
    default=None,
    help="Prefix cache of the nemotron model in MiB (KV blocks + Mamba state snapshots); 0 turns it "
    "off. Default: the memory plan's budget (as many prefix tokens as the slots hold).",
)
@click.option(
    "--trtllm/--no-trtllm",
    "trtllm",
    default=None,
    help="Write TensorRT-LLM's tensorrt_llm model (default: for GPU targets).",
)
@click.option(
    "--trtllm-backend-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A TensorRT-LLM checkout to copy the llmapi model.py/helpers.py from.",
)
@click.option("--force", is_flag=True, help="Replace OUT even if it was not written by `package`.")
@user_errors
def package(
    engine: Path,
    out: Path,
    max_batch_size: int,
    device: str,
    mtp: int | None,
    max_seq_len: int | None,
    stream_interval: int,
    copy_engine: bool,
    prefix_cache_mb: float | None,
    trtllm: bool | None,
    trtllm_backend_dir: Path | None,
    force: bool,
) -> None:
    """Write a Triton model repository for an engine dir.

    Models: `nemotron` (our runtime, Python backend, decoupled streaming, TensorRT-LLM's llmapi tensor names)
    and, for GPU targets, `tensorrt_llm` (TensorRT-LLM's llmapi model; config.pbtxt + model.yaml). Every
    config.pbtxt is validated by parsing it into Triton's ModelConfig.
    """
    from triton_repo.package import PackageConfig
    from triton_repo.package import package as write_repository

    cfg = PackageConfig(
        max_batch_size=max_batch_size,
        device=device,
        mtp=mtp,
        max_seq_len=max_seq_len,
        stream_interval=stream_interval,
        copy_engine=copy_engine,
        include_trtllm=trtllm,
        trtllm_backend_dir=trtllm_backend_dir,
        prefix_cache_mb=prefix_cache_mb,
    )
    repo = write_repository(engine, out, cfg, force=force)
    import json

    manifest = json.loads((repo / "manifest.json").read_text())
    for name, info in manifest["models"].items():
        click.echo(f"  {name}: {info['kind']}" + (f" ({info['model_code']})" if "model_code" in info else ""))
    click.echo(f"model repository: {repo}")
