"""Engine dir -> Triton model repository (`trtllm-nemotron package ENGINE --out REPO`).

Layout written (atomically: a temp dir next to REPO, then rename):
```
REPO/
  nemotron/config.pbtxt         our Python-backend model: decoupled, llmapi tensor names (triton_repo.protocol)
  nemotron/1/model.py           the template triton_repo/templates/nemotron/model.py (runs trtllm_nemotron.runtime)
  tensorrt_llm/config.pbtxt     GPU targets only: TensorRT-LLM's llmapi model (same tensor names)
  tensorrt_llm/1/model.yaml     LLM-API kwargs from <engine>/trtllm/llm_api.yaml + `model: <engine>/checkpoint`
                                + triton_config {max_batch_size: 0, decoupled: true}
  tensorrt_llm/1/README.md      where model.py / helpers.py come from (NVIDIA's code: we never ship it)
  manifest.json                 what was packaged, from which engine, with which options (written last)
```
`tensorrt_llm/1/model.py` and `helpers.py` are TensorRT-LLM's `triton_backend/all_models/llmapi/tensorrt_llm/1/`
files. They are copied in when `trtllm_backend_dir` is given (a TensorRT-LLM checkout at the tag matching the
container's `tensorrt_llm.__version__`); otherwise `serve` reports the model as skipped and why.

Every config.pbtxt is generated from `ModelConfigSpec` and validated by a parse into Triton's ModelConfig.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from triton_repo.model_config import InstanceGroup, ModelConfigSpec, write_config
from triton_repo.protocol import LLMAPI_INPUTS, LLMAPI_OUTPUTS, NEMOTRON_INPUTS, NEMOTRON_OUTPUTS
from trtllm_nemotron.errors import PackageError
from trtllm_nemotron.fileio import atomic_dir

GPU_TARGETS = ("b200", "h200", "h100")
NEMOTRON_MODEL = "nemotron"
TRTLLM_MODEL = "tensorrt_llm"
TRTLLM_FILES = ("model.py", "helpers.py")
TRTLLM_SOURCE_DIR = "triton_backend/all_models/llmapi/tensorrt_llm/1"
TRTLLM_IMAGE = "nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3"
_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class PackageConfig:
    """What `package` writes. The CLI turns flags into this."""

    max_batch_size: int = 8  # runtime slots of the nemotron model (continuous batching)
    device: str = "auto"  # nemotron model: auto | cpu | cuda
    mtp: int | None = None  # None: the engine's MTP setting
    max_seq_len: int | None = None
    stream_interval: int = (
        1  # nemotron model: a streamed response every n-th iteration (TensorRT-LLM's option)
    )
    copy_engine: bool = False  # copy the engine into nemotron/1/engine (self-contained repo)
    include_trtllm: bool | None = None  # None: for GPU targets
    trtllm_backend_dir: Path | None = None  # a TensorRT-LLM checkout, to copy model.py/helpers.py from
    prefix_cache_mb: float | None = (
        None  # nemotron model's prefix cache: None = the memory plan's default, 0 = off
    )

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise PackageError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise PackageError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.stream_interval < 1:
            raise PackageError(f"stream_interval must be >= 1, got {self.stream_interval}")
        if self.prefix_cache_mb is not None and not self.prefix_cache_mb >= 0:
            raise PackageError(
                f"prefix_cache_mb must be >= 0 MiB (0 turns the prefix cache off), got {self.prefix_cache_mb}"
            )


def read_build_manifest(engine_dir: Path) -> dict:
    """`<engine>/build.json` as a dict; PackageError naming what is missing."""
    manifest = engine_dir / "build.json"
    if not engine_dir.is_dir():
        raise PackageError(
            f"engine dir {engine_dir} does not exist; build one with `trtllm-nemotron build` (or `make build-engine`)"
        )
    if not manifest.is_file():
        raise PackageError(
            f"{engine_dir} is not an engine dir: no build.json (expected build.json + checkpoint/ "
            f"from `trtllm-nemotron build`)"
        )
    if not (engine_dir / "checkpoint").is_dir():
        raise PackageError(f"{engine_dir} is not an engine dir: no checkpoint/ next to build.json")
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise PackageError(f"{manifest} is not valid JSON ({e}); rebuild the engine") from e


def engine_target(build: dict) -> str:
    """The target name recorded in build.json (`"target": "b200"` or `{"target": {"name": "b200"}}`)."""
    t = build.get("target", "cpu")
    if isinstance(t, dict):
        t = t.get("name", "cpu")
    return str(t).lower()


def nemotron_spec(engine_ref: str, cfg: PackageConfig) -> ModelConfigSpec:
    params = [
        ("engine_dir", engine_ref),
        ("device", cfg.device),
        ("max_batch_size", str(cfg.max_batch_size)),
        ("mtp", "" if cfg.mtp is None else str(cfg.mtp)),
        ("max_seq_len", "" if cfg.max_seq_len is None else str(cfg.max_seq_len)),
        ("stream_interval", str(cfg.stream_interval)),
        ("prefix_cache_mb", "" if cfg.prefix_cache_mb is None else f"{cfg.prefix_cache_mb:g}"),
    ]
    return ModelConfigSpec(
        name=NEMOTRON_MODEL,
        inputs=NEMOTRON_INPUTS,
        outputs=NEMOTRON_OUTPUTS,
        backend="python",
        max_batch_size=0,
        decoupled=True,
        instance_groups=(InstanceGroup(1, "KIND_CPU"),),
        parameters=tuple(params),
        comment="Generated by `trtllm-nemotron package`. Our runtime behind TensorRT-LLM's llmapi tensor names.\n"
        "Batching is the runtime's continuous batching (max_batch_size parameter), not Triton's.",
    )


def trtllm_spec() -> ModelConfigSpec:
    # max_batch_size / decoupled are left unset: the llmapi model's auto_complete_config sets them from model.yaml
    return ModelConfigSpec(
        name=TRTLLM_MODEL,
        inputs=LLMAPI_INPUTS,
        outputs=LLMAPI_OUTPUTS,
        backend="python",
        max_batch_size=None,
        decoupled=None,
        instance_groups=(InstanceGroup(1, "KIND_CPU"),),
        comment="Generated by `trtllm-nemotron package`: TensorRT-LLM's llmapi model (PyTorch backend).\n"
        "max_batch_size and decoupled come from 1/model.yaml (triton_config), as the llmapi model requires.",
    )


def trtllm_model_yaml(engine_dir: Path, checkpoint: Path | None = None) -> dict:
    """LLM-API kwargs for the llmapi model: the engine's llm_api.yaml plus the checkpoint path and triton_config.

    `checkpoint` is the absolute path written as `model` (default `<engine_dir>/checkpoint`); a repository
    packaged with `copy_engine` passes its own copy, so it never refers back to the original engine dir.
    TensorRT-LLM's llmapi model hands `model` to `LLM(**args)` unchanged (triton_backend/all_models/llmapi/
    tensorrt_llm/1/model.py), so a relative path would resolve against tritonserver's working directory.
    """
    import yaml

    src = engine_dir / "trtllm" / "llm_api.yaml"
    if not src.is_file():
        raise PackageError(
            f"{engine_dir} was built for a GPU target but has no trtllm/llm_api.yaml; rebuild it "
            f"with `trtllm-nemotron build --target <gpu>`"
        )
    opts = yaml.safe_load(src.read_text()) or {}
    if not isinstance(opts, dict):
        raise PackageError(f"{src}: expected a mapping of LLM-API options, got {type(opts).__name__}")
    opts.pop("triton_config", None)
    model = (checkpoint if checkpoint is not None else engine_dir / "checkpoint").resolve()
    return {
        "model": str(model),
        "backend": "pytorch",
        **{k: v for k, v in opts.items() if k not in ("model", "backend")},
        "triton_config": {"max_batch_size": 0, "decoupled": True},
    }


_TRTLLM_README = """# tensorrt_llm/1: TensorRT-LLM's llmapi Triton model

`config.pbtxt` and `model.yaml` were generated by `trtllm-nemotron package` from the engine's
`trtllm/llm_api.yaml`. The model code is NVIDIA's and is not shipped here: `model.py` and `helpers.py`
are TensorRT-LLM's `{src}/`.

On the GPU host, inside NVIDIA's container `{image}` (use the tag whose `tensorrt_llm` matches; check with
`python3 -c "import tensorrt_llm; print(tensorrt_llm.__version__)"`):

```bash
git clone -b v$(python3 -c "import tensorrt_llm; print(tensorrt_llm.__version__)") --depth 1 \\
    https://github.com/NVIDIA/TensorRT-LLM /opt/TensorRT-LLM
cp /opt/TensorRT-LLM/{src}/model.py /opt/TensorRT-LLM/{src}/helpers.py REPO/tensorrt_llm/1/
# or: trtllm-nemotron package ENGINE --out REPO --trtllm-backend-dir /opt/TensorRT-LLM
trtllm-nemotron serve REPO        # uses /opt/tritonserver/bin/tritonserver on GPU hosts
```
"""


def package(
    engine_dir: Path | str, out: Path | str, cfg: PackageConfig | None = None, *, force: bool = False
) -> Path:
    """Write the Triton model repository for `engine_dir` to `out` (atomically); returns `out`.

    A repository written earlier by `package` (it has manifest.json) is replaced; anything else at `out`
    only with `force`.

    Raises:
        PackageError: not an engine dir, a foreign `out` without `force`, or a config that does not validate.
    """
    cfg = cfg or PackageConfig()
    engine_dir, out = Path(engine_dir).resolve(), Path(out).resolve()
    build = read_build_manifest(engine_dir)
    target = engine_target(build)
    if out.exists() and not force and not (out / "manifest.json").is_file():
        raise PackageError(
            f"{out} exists and is not a repository written by `package` (no manifest.json); "
            f"pass --force to replace it"
        )
    include_trtllm = cfg.include_trtllm if cfg.include_trtllm is not None else target in GPU_TARGETS

    with atomic_dir(out) as tmp:
        models: dict[str, dict] = {}
        # nemotron: our runtime
        ndir = tmp / NEMOTRON_MODEL
        (ndir / "1").mkdir(parents=True)
        if cfg.copy_engine:
            shutil.copytree(engine_dir, ndir / "1" / "engine", symlinks=True)
            engine_ref = "1/engine"  # model.py resolves it against the model dir
            # the llmapi model loads the copy at its final place inside `out` (after the rename below)
            checkpoint = out / NEMOTRON_MODEL / "1" / "engine" / "checkpoint"
        else:
            engine_ref = str(engine_dir)
            checkpoint = engine_dir / "checkpoint"
        write_config(nemotron_spec(engine_ref, cfg), ndir)
        shutil.copy2(_TEMPLATES / "nemotron" / "model.py", ndir / "1" / "model.py")
        models[NEMOTRON_MODEL] = {"kind": "embedded runtime", "engine_dir": engine_ref}

        if include_trtllm:
            import yaml

            tdir = tmp / TRTLLM_MODEL
            (tdir / "1").mkdir(parents=True)
            write_config(trtllm_spec(), tdir)
            (tdir / "1" / "model.yaml").write_text(
                "# Generated by `trtllm-nemotron package` from the engine's trtllm/llm_api.yaml.\n"
                + yaml.safe_dump(trtllm_model_yaml(engine_dir, checkpoint), sort_keys=False)
            )
            (tdir / "1" / "README.md").write_text(
                _TRTLLM_README.format(src=TRTLLM_SOURCE_DIR, image=TRTLLM_IMAGE)
            )
            copied = False
            if cfg.trtllm_backend_dir is not None:
                src = Path(cfg.trtllm_backend_dir) / TRTLLM_SOURCE_DIR
                missing = [f for f in TRTLLM_FILES if not (src / f).is_file()]
                if missing:
                    raise PackageError(
                        f"--trtllm-backend-dir {cfg.trtllm_backend_dir}: {missing} not found under "
                        f"{TRTLLM_SOURCE_DIR}; expected a TensorRT-LLM checkout"
                    )
                for f in TRTLLM_FILES:
                    shutil.copy2(src / f, tdir / "1" / f)
                copied = True
            models[TRTLLM_MODEL] = {
                "kind": "TensorRT-LLM llmapi",
                "model_code": "copied"
                if copied
                else "for GPU hosts: add NVIDIA's model.py and helpers.py with --trtllm-backend-dir "
                "(see tensorrt_llm/1/README.md); `serve` runs `nemotron` meanwhile",
            }

        manifest = {
            "format": 1,
            "engine_dir": str(engine_dir),
            "target": target,
            "models": models,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "created_unix": int(time.time()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def repo_models(repo: Path | str) -> list[str]:
    """Model names in a repository (dirs holding a config.pbtxt), sorted."""
    repo = Path(repo)
    if not repo.is_dir():
        raise PackageError(
            f"model repository {repo} does not exist; create it with `trtllm-nemotron package`"
        )
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
