"""The exported ONNX network (`<engine>/onnx/`) -> a TensorRT engine `<engine>/trt/<sm>.plan` (GPU hosts only).

The thin, isolated TensorRT stage of the build (specs/trt_engine.md §1.2, §1.5, §2.4). `trt_unavailable(sm)` says
why it cannot run here (no `tensorrt`, no CUDA GPU, another SM) or None; `build_trt_engines(onnx_dir, out_dir,
...)` then:

1. imports `plugins.trt`, which registers our quickly-deployable plugins (`trtllm_nemotron::<op>`) in this
   process -- the parser looks plugin nodes up by op_type + namespace (the node's `plugin_namespace` / domain);
2. creates the network with `PREFER_AOT_PYTHON_PLUGINS` (every plugin node also carries `aot=1`, which selects
   the AOT implementation per node: its Triton PTX is embedded in the engine, which then runs without Python)
   and, before TensorRT 11 (always strongly typed there), `STRONGLY_TYPED`: the ONNX carries explicit dtypes;
3. parses `model.onnx` (the external data beside it) with `trt.OnnxParser.parse_from_file`;
4. adds two optimisation profiles, as Edge-LLM's builder does: 0 = context (one sequence, 1..`max_tokens`
   tokens: a prefill chunk), 1 = generation (1..`max_batch` sequences, 1..1+`mtp` tokens: decode and MTP
   verification); the state pools have one fixed shape `[pool, ...]` / `max_seq_len` in both;
5. enables `PreviewFeature.ALIASED_PLUGIN_IO_10_03` (the Mamba plugin declares its state outputs aliased to
   its state inputs) and serializes the engine to `<out_dir>/sm_<N>.plan`, then `mtp.onnx` the same way to
   `<out_dir>/sm_<N>.mtp.plan` (written to a temp file, then renamed).

The runtime side (binding each state's input and output to one buffer) is `trtllm_nemotron.runtime.trt_backend`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trtllm_nemotron.errors import BuildError


def trt_unavailable(sm: int) -> str | None:
    """Why a TensorRT engine for sm_<sm> cannot be built here, or None."""
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # ImportError, or a libnvinfer / CUDA load failure
        return f"tensorrt does not import here ({type(e).__name__}: {e}); pip install tensorrt on a GPU host"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor != sm:
        return f"this GPU is sm_{major}{minor}, the engine targets sm_{sm}"
    return None


def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except Exception:
        return None
    return str(trt.__version__)


def _profile_shapes(entry: dict[str, Any], dims: dict[str, tuple[int, int, int]]) -> tuple[list[int], ...]:
    """(min, opt, max) of one io.json input; named dims from `dims`, numbers as they are."""
    out: tuple[list[int], list[int], list[int]] = ([], [], [])
    for d in entry["shape"]:
        lo, opt, hi = dims[d] if isinstance(d, str) else (d, d, d)
        out[0].append(lo)
        out[1].append(opt)
        out[2].append(hi)
    return out


def _build_one(trt: Any, onnx_path: Path, io: dict[str, Any], plan_path: Path, profiles: list[dict]) -> int:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    major = int(str(trt.__version__).split(".")[0])
    if major < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if hasattr(trt.PreviewFeature, "ALIASED_PLUGIN_IO_10_03"):
        config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    for dims in profiles:
        profile = builder.create_optimization_profile()
        for entry in io["inputs"]:
            profile.set_shape(entry["name"], *_profile_shapes(entry, dims))
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BuildError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    tmp = plan_path.with_name(f".{plan_path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, plan_path)
    return plan_path.stat().st_size


def build_profiles(*, max_batch: int, max_tokens: int, mtp: int, pool: int, max_seq_len: int) -> list[dict]:
    """Named-dim ranges (min, opt, max) of the two optimisation profiles: context, generation."""
    fixed = {"pool": (pool, pool, pool), "max_seq_len": (max_seq_len, max_seq_len, max_seq_len)}
    gen_tokens = 1 + mtp
    return [
        {"batch": (1, 1, 1), "tokens": (1, max_tokens, max_tokens), **fixed},
        {"batch": (1, max_batch, max_batch), "tokens": (1, gen_tokens, gen_tokens), **fixed},
    ]


def build_trt_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    *,
    sm: int,
    max_batch: int,
    max_tokens: int,
    mtp: int,
    max_seq_len: int,
) -> dict[str, Any]:
    """Build `<out_dir>/sm_<sm>.plan` (and `.mtp.plan`) from `onnx_dir` (see the module docstring). Needs
    `trt_unavailable(sm) is None`. Returns what build.json records about them."""
    import tensorrt as trt

    import plugins.trt  # noqa: F401 - registers the QDPs the parser looks up

    d, out = Path(onnx_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    io = json.loads((d / "io.json").read_text())
    pool = max_batch + 1  # the runtime's slots plus one scratch row
    profiles = build_profiles(
        max_batch=max_batch, max_tokens=max_tokens, mtp=mtp, pool=pool, max_seq_len=max_seq_len
    )
    plans = {}
    for key, suffix in (("model", ""), ("mtp", ".mtp")):
        g = io["graphs"].get(key)
        if g is None or (key == "mtp" and not mtp):
            continue
        plan = out / f"sm_{sm}{suffix}.plan"
        size = _build_one(trt, d / g["file"], g, plan, profiles)
        plans[key] = {"file": f"trt/{plan.name}", "bytes": size}
    return {
        "plans": plans,
        "profiles": profiles,
        "pool": pool,
        "max_seq_len": max_seq_len,
        "tensorrt": tensorrt_version(),
    }
