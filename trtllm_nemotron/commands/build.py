"""`trtllm-nemotron build`: HF checkpoint -> engine dir (checkpoint/, trtllm/llm_api.yaml, plugins/, onnx/, trt/,
build.json)."""

from __future__ import annotations

from pathlib import Path

import click

from trtllm_nemotron.commands import user_errors

_TARGETS = ("b200", "h200", "h100", "cpu")
_PRESETS = ("latency", "throughput", "balanced")  # builder.presets.PRESETS (no import: --help stays light)


@click.command("build")
@click.option(
    "--model",
    "model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="HF checkpoint dir (default: the embedded tiny model).",
)
@click.option("--target", type=click.Choice(_TARGETS), default="b200", show_default=True)
@click.option("--recipe", default=None, help="Quantization recipe, or bf16 (default: the target's default).")
@click.option("--mtp", type=int, default=3, show_default=True, help="MTP draft length (0 = no speculation).")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=Path("build/engine"),
    show_default=True,
    help="Engine dir to write (replaced atomically).",
)
@click.option("--gpus", type=int, default=None, help="GPUs to plan for (default: fewest that fit).")
@click.option(
    "--max-seq-len", type=int, default=None, help="Context length (default: min(model max, 131072))."
)
@click.option("--max-batch-size", type=int, default=None, help="Batch (default: the planner's choice).")
@click.option("--resume", is_flag=True, help="Continue an interrupted build, skipping completed stages.")
@click.option(
    "--onnx", "onnx", is_flag=True, help="Export the network as ONNX with our plugin nodes to onnx/."
)
@click.option(
    "--trt",
    "trt",
    is_flag=True,
    help="Build the TensorRT engine trt/<sm>.plan from onnx/ (implies --onnx; needs tensorrt and a GPU "
    "of the target's SM, else the stage says it was skipped and why).",
)
@click.option(
    "--validate",
    is_flag=True,
    help="Run one prompt through tensorrt_llm.LLM and through the TensorRT engine (GPU hosts).",
)
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.option(
    "--no-cache", is_flag=True, help="Do not reuse quantized checkpoints / plugin kernels of earlier builds."
)
@click.option(
    "--calib-samples", type=int, default=None, help="Calibration samples (default: the quantizer's)."
)
@click.option(
    "--preset",
    type=click.Choice(_PRESETS),
    default=None,
    help="NVIDIA's published serving config (builder/presets.py): sets batch, MTP and parallelism.",
)
@user_errors
def build(
    model: Path | None,
    target: str,
    recipe: str | None,
    mtp: int,
    out: Path,
    gpus: int | None,
    max_seq_len: int | None,
    max_batch_size: int | None,
    resume: bool,
    onnx: bool,
    trt: bool,
    validate: bool,
    no_progress: bool,
    no_cache: bool,
    calib_samples: int | None,
    preset: str | None,
) -> None:
    """Build an engine dir for a target: quantize, compile plugin kernels, write the TensorRT-LLM config,
    export the network as ONNX (--onnx) and build its TensorRT engine (--trt).

    Stages: inspect, quantize, checkpoint, plugins, trtllm_config, onnx, trt, validate, manifest (build.json,
    last).
    The output appears only when complete; --resume continues an interrupted build.
    """
    from builder.defaults import default_model_dir
    from builder.pipeline import build_engine

    if preset is not None:
        from builder.presets import get_preset

        if target == "cpu":
            raise click.UsageError("--preset is a TensorRT-LLM serving config: use it with a GPU --target")
        p = get_preset(preset)
        mtp = p.mtp  # the preset's draft length (the build plans memory for it)
        if max_batch_size is None:
            max_batch_size = p.options.get("max_batch_size")

    path = build_engine(
        model or default_model_dir(),
        out,
        target=target,
        recipe=recipe,
        mtp=mtp,
        resume=resume,
        validate=validate,
        progress=not no_progress,
        gpus=gpus,
        max_seq_len=max_seq_len,
        max_batch_size=max_batch_size,
        cache=not no_cache,
        calib_samples=calib_samples,
        onnx=onnx,
        trt=trt,
        preset=preset,
    )
    if preset is not None:
        from builder.manifest import read_manifest

        for note in (read_manifest(path).get("trtllm") or {}).get("notes") or []:
            click.echo(f"note: {note}", err=True)
    click.echo(f"engine dir: {path}")
