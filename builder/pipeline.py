"""HF checkpoint -> engine directory, in stages, atomically, resumably.

Stages (each records its status, time and result in the staging dir's `.state.json`):

    inspect        open + validate the source checkpoint, hash its files, plan memory (refuses an
                   impossible plan with the numbers)
    quantize       `quant.quantize_checkpoint(src, staging/checkpoint, recipe=...)`; `bf16` copies
    checkpoint     complete checkpoint/ (tokenizer files), re-validate it, accuracy report
    plugins        AOT-compile the plugin kernels for the target SM into plugins/sm_<N>/  (GPU targets)
    trtllm_config  trtllm/llm_api.yaml sized from the plan                                (GPU targets)
    onnx           with `onnx=True` (or `trt=True`): the network as ONNX with our plugin nodes in onnx/
                   (builder/onnx_export.py: model.onnx, mtp.onnx, external data, io.json), fully checked
                   by `onnx.checker`; activations float32 for the cpu target, bfloat16 for GPU targets
    trt            with `trt=True`, where `tensorrt` imports and a GPU of the target's SM is present: the
                   TensorRT engine trt/sm_<N>.plan (+ .mtp.plan) built from onnx/ (builder/trt_engine.py,
                   two optimisation profiles); elsewhere skipped, with why
    validate       when `validate=True`: load the staged engine dir with `tensorrt_llm.LLM` and run one
                   prompt (where `tensorrt_llm` imports and a GPU is present), and run one prompt through
                   the TensorRT engine (`runtime.trt_backend`, states bound in place) against the reference
                   network's greedy tokens (where the trt stage built one); each part skipped, with why
    manifest       hash every output and write build.json (last)

Atomicity: everything is written to `<parent>/.<name>.building/`; only after build.json exists is it
renamed to `<out>` (a previous engine dir there is moved aside first and deleted after). An
interrupted build therefore never leaves a half-written `<out>`: the staging dir stays, and
`resume=True` continues it, skipping stages already done (same model, target, recipe and sizes;
otherwise it refuses). Without `resume`, a stale staging dir is discarded.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from builder import cache as bc
from builder import manifest as mf
from builder.plan import Plan, model_family, plan_for_build, plan_memory, recipe_formats
from builder.targets import Target, get_target
from builder.trtllm_config import TRTLLM_SOURCE, llm_api_config, write_llm_api_yaml
from trtllm_nemotron.config import MAX_DRAFT_LEN, NemotronHConfig
from trtllm_nemotron.errors import BuildError, NemotronError
from trtllm_nemotron.fileio import OLD_MARK, TEMP_MARK, atomic_write_text, replace_dir
from trtllm_nemotron.locking import LockHeld, path_lock

STAGES = (
    "inspect",
    "quantize",
    "checkpoint",
    "plugins",
    "trtllm_config",
    "onnx",
    "trt",
    "validate",
    "manifest",
)
STATE_FILE = ".state.json"
CPU_PLAN_SEQ_LEN = 4096
VALIDATE_PROMPT = "def fibonacci(n):"
VALIDATE_TOKENS = 8
TRT_CONTEXT_TOKENS = 256  # the context profile's largest prefill chunk (the runtime's default prefill_chunk)
# the TensorRT engine's state pools when --max-batch-size / --max-seq-len are not given: its KV pools are fixed
# inputs [rows, 2, kv_heads, positions, head_dim] per attention layer, so the serving plan's sizes (2048 rows for
# a small model, Super's 131072-token context) would make them the largest thing in the engine
TRT_DEFAULT_BATCH = 64
TRT_DEFAULT_SEQ_LEN = 4096
_TOOLS = {
    "trtllm_nemotron": "trtllm-nemotron",
    "torch": "torch",
    "safetensors": "safetensors",
    "tokenizers": "tokenizers",
    "numpy": "numpy",
    "triton": "triton",
    "nvidia_modelopt": "nvidia-modelopt",
    "transformers": "transformers",
    "tensorrt_llm": "tensorrt_llm",
    "tensorrt": "tensorrt",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}


def staging_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir).absolute()
    return out.parent / f".{out.name}.building"


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _TOOLS.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a checkpoint's top-level files (no hidden files, no subdirs) into a fresh `dst`."""
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            shutil.copy2(p, dst / p.name)


def _replace_paths(obj: Any, mapping: dict[str, str]) -> Any:
    """`obj` (JSON-like) with every string equal to / under a key of `mapping` rewritten to its value."""
    if isinstance(obj, dict):
        return {k: _replace_paths(v, mapping) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_replace_paths(v, mapping) for v in obj]
    if isinstance(obj, (str, Path)):
        text = str(obj)
        for old, new in mapping.items():
            if text == old or text.startswith(old + "/"):
                return new + text[len(old) :]
        return text if isinstance(obj, Path) else obj
    return obj


class _Build:
    """One build: its parameters, its staging dir and the state carried between stages."""

    def __init__(
        self,
        model_dir: Path,
        out_dir: Path,
        target: Target,
        recipe: str,
        mtp: int,
        *,
        validate: bool,
        progress: bool,
        gpus: int | None,
        max_seq_len: int | None,
        max_batch_size: int | None,
        cache: bool = True,
        calib_samples: int | None = None,
        calib_seq_len: int | None = None,
        onnx: bool = False,
        trt: bool = False,
        preset: str | None = None,
    ) -> None:
        self.model_dir, self.out_dir, self.target, self.recipe, self.mtp = (
            model_dir,
            out_dir,
            target,
            recipe,
            mtp,
        )
        self.validate, self.progress = validate, progress
        self.onnx, self.trt = onnx or trt, trt
        self.gpus, self.max_seq_len, self.max_batch_size = gpus, max_seq_len, max_batch_size
        self.cache, self.calib_samples, self.calib_seq_len = (
            cache and bc.enabled(),
            calib_samples,
            calib_seq_len,
        )
        self.preset = preset
        self.stage_dir = staging_dir(out_dir)
        self.state: dict[str, Any] = {"params": self.params(), "done": {}}
        self.cfg: NemotronHConfig | None = None

    def params(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "target": self.target.name,
            "recipe": self.recipe,
            "mtp": self.mtp,
            "gpus": self.gpus,
            "max_seq_len": self.max_seq_len,
            "max_batch_size": self.max_batch_size,
            "validate": self.validate,
            "calib_samples": self.calib_samples,
            "calib_seq_len": self.calib_seq_len,
            "onnx": self.onnx,
            "trt": self.trt,
            "preset": self.preset,
        }

    # ---- state ----
    def load_state(self, resume: bool) -> None:
        state_path = self.stage_dir / STATE_FILE
        if self.stage_dir.exists() and not resume:
            shutil.rmtree(self.stage_dir)
        if resume and state_path.is_file():
            saved = json.loads(state_path.read_text())
            if saved.get("params") != self.params():
                raise BuildError(
                    f"the partial build at {self.stage_dir} was started with {saved.get('params')}, not "
                    f"{self.params()}; rerun without --resume to start over"
                )
            inspected = saved["done"].get("inspect")
            if inspected and mf.hash_tree(self.model_dir, exclude=()) != inspected["data"]["inputs"]:
                raise BuildError(
                    f"the model files in {self.model_dir} changed since the partial build at {self.stage_dir} "
                    "inspected them; rerun without --resume to start over"
                )
            self.state = saved
        elif self.stage_dir.exists():  # resume asked, but nothing recorded: start clean
            shutil.rmtree(self.stage_dir)
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.stage_dir)
        self.save_state()

    def save_state(self) -> None:
        atomic_write_text(self.stage_dir / STATE_FILE, json.dumps(self.state, indent=1, default=str))

    def data(self, stage: str) -> dict[str, Any]:
        return self.state["done"][stage]["data"]

    # ---- stages: each returns (status, detail, data) ----
    def stage_inspect(self) -> tuple[str, str, dict[str, Any]]:
        from trtllm_nemotron.checkpoint import check_checkpoint, open_checkpoint

        reader = open_checkpoint(self.model_dir)
        try:
            check_checkpoint(reader)
            cfg = reader.config
            quantized = reader.quantization is not None
        finally:
            reader.close()
        if quantized and self.recipe != "bf16":
            raise BuildError(
                f"{self.model_dir} is already quantized (hf_quant_config / quantization_config present); "
                "build it with --recipe bf16 (copies it as is) or point --model at the BF16 checkpoint"
            )
        if self.mtp and not cfg.num_nextn_predict_layers:
            raise BuildError(
                f"--mtp {self.mtp}: the model has no MTP layers (num_nextn_predict_layers = 0); use --mtp 0"
            )
        if self.target.is_gpu:
            plan = plan_for_build(
                cfg,
                self.target,
                recipe=self.recipe,
                mtp=self.mtp,
                gpus=self.gpus,
                max_seq_len=self.max_seq_len,
                batch=self.max_batch_size,
            )
        else:
            seq = self.max_seq_len or min(cfg.max_position_embeddings, CPU_PLAN_SEQ_LEN)
            plan = plan_memory(
                cfg,
                self.target,
                recipe=self.recipe,
                gpus=1,
                max_seq_len=seq,
                batch=self.max_batch_size or 1,
                mtp=self.mtp,
            ).check()
        inputs = mf.hash_tree(self.model_dir, exclude=())
        detail = (
            f"{len(inputs)} files, {cfg.num_hidden_layers} layers, plan: {plan.gpus} x {plan.target}, "
            f"batch {plan.batch} at {plan.max_seq_len} tokens"
        )
        return "done", detail, {"inputs": inputs, "plan": plan.to_dict()}

    def stage_quantize(self) -> tuple[str, str, dict[str, Any]]:
        out = self.stage_dir / "checkpoint"
        if out.exists():  # left by an interrupted attempt of this stage
            shutil.rmtree(out)
        if self.recipe == "bf16":
            _copy_checkpoint(self.model_dir, out)
            return "done", "bf16: checkpoint copied unchanged", {"summary": None}
        from trtllm_nemotron.quant import quantize_checkpoint

        calib = {
            k: v
            for k, v in (("calib_samples", self.calib_samples), ("calib_seq_len", self.calib_seq_len))
            if v is not None
        }

        def produce(dest: Path) -> Any:
            summary = quantize_checkpoint(
                self.model_dir, dest, recipe=self.recipe, progress=self.progress, **calib
            )
            # paths inside the summary name the staging dir: record them relative to the engine dir
            return _replace_paths(summary, {str(dest.absolute()): "checkpoint", str(dest): "checkpoint"})

        src_bytes = sum(p.stat().st_size for p in self.model_dir.iterdir() if p.is_file())
        if self.cache and src_bytes <= bc.MAX_CACHED_BYTES:
            key = bc.quantize_key(self.data("inspect")["inputs"], self.recipe, calib)
            summary, hit = bc.cached_dir("quantized", key, out, produce)
        else:
            summary, hit = json.loads(json.dumps(produce(out), default=str)), False
        return "done", f"recipe {self.recipe}" + (" (cached)" if hit else ""), {"summary": summary}

    def stage_checkpoint(self) -> tuple[str, str, dict[str, Any]]:
        from trtllm_nemotron.checkpoint import check_checkpoint, open_checkpoint

        ckpt = self.stage_dir / "checkpoint"
        added = []
        for p in sorted(self.model_dir.iterdir()):  # tokenizer / generation files the quantizer did not copy
            if (
                p.is_file()
                and not p.name.startswith(".")
                and not p.name.endswith(".safetensors")
                and p.name not in ("config.json", "model.safetensors.index.json")
                and not (ckpt / p.name).exists()
            ):
                shutil.copy2(p, ckpt / p.name)
                added.append(p.name)
        reader = open_checkpoint(ckpt)
        try:
            check_checkpoint(reader)
        finally:
            reader.close()
        accuracy = None
        summary = self.data("quantize")["summary"]
        if self.recipe != "bf16":
            accuracy = (summary or {}).get("accuracy") if isinstance(summary, dict) else None
            if accuracy is None:
                from trtllm_nemotron.quant.accuracy import accuracy_report

                accuracy = json.loads(json.dumps(accuracy_report(ckpt, self.model_dir), default=str))
        detail = "validated" + (f", added {added}" if added else "")
        return "done", detail, {"accuracy": accuracy}

    def stage_plugins(self) -> tuple[str, str, dict[str, Any]]:
        if not self.target.is_gpu:
            return "skipped", "cpu target: no plugin kernels (the embedded runtime uses torch references)", {}
        from plugins.aot import compile_all

        sm, sm_name = self.target.sm, self.target.sm_name
        assert self.cfg is not None and sm is not None and sm_name is not None  # a GPU target, after inspect

        def produce(dest: Path) -> Any:
            return compile_all(dest, sms=(sm,), config=self.cfg, progress=self.progress)

        dest = self.stage_dir / "plugins"
        if dest.exists():  # left by an interrupted attempt of this stage
            shutil.rmtree(dest)
        if self.cache:
            key = bc.plugins_key(sm, self.cfg.to_dict())
            summary, hit = bc.cached_dir("plugins", key, dest, produce)
        else:
            summary, hit = json.loads(json.dumps(produce(dest), default=str)), False
        sm_dir = self.stage_dir / "plugins" / sm_name
        if not sm_dir.is_dir():
            raise BuildError(f"plugins.aot.compile_all did not write {sm_dir}; expected plugins/{sm_name}/")
        n = sum(1 for p in sm_dir.rglob("*") if p.is_file())
        detail = f"{n} files in plugins/{self.target.sm_name}" + (" (cached)" if hit else "")
        return "done", detail, {"summary": summary}

    def stage_trtllm_config(self) -> tuple[str, str, dict[str, Any]]:
        if not self.target.is_gpu:
            return "skipped", "cpu target: no TensorRT-LLM config", {}
        assert self.cfg is not None
        plan = self.plan()
        fmts, _ = recipe_formats(self.cfg, self.recipe)
        expert_fmt = next(
            (f for n, f in fmts.items() if ".experts.0.up_proj." in n and n.startswith("backbone.")), None
        )
        notes: list[str] = []
        cfg_dict = llm_api_config(
            self.cfg,
            self.target,
            recipe=self.recipe,
            mtp=self.mtp,
            plan=plan,
            expert_format=expert_fmt,
            preset=self.preset,
            notes=notes,
        )
        write_llm_api_yaml(cfg_dict, self.stage_dir / "trtllm" / "llm_api.yaml")
        backend, reason = (
            self.target.moe_backend(expert_fmt) if "E" in self.cfg.pattern else (None, "no MoE layers")
        )
        if self.preset is not None and "moe_config" in cfg_dict:  # the preset may choose another backend
            backend, reason = cfg_dict["moe_config"]["backend"], "; ".join(notes[1:]) or reason
        detail = f"TP {plan.gpus}, batch {plan.batch}, seq {plan.max_seq_len}, moe {backend}"
        if self.preset is not None:
            detail += f", preset {self.preset}"
        return (
            "done",
            detail,
            {"moe_backend": backend, "moe_backend_reason": reason, "preset": self.preset, "notes": notes},
        )

    def stage_onnx(self) -> tuple[str, str, dict[str, Any]]:
        if not self.onnx:
            return "skipped", "not requested (pass --onnx)", {}
        from builder.onnx_export import check_onnx, export_onnx

        dest = self.stage_dir / "onnx"
        dtype = "bfloat16" if self.target.is_gpu else "float32"
        io = export_onnx(self.stage_dir / "checkpoint", dest, dtype=dtype, progress=self.progress)
        counts = check_onnx(dest)
        size = sum(p.stat().st_size for p in dest.iterdir())
        nodes = {k: g["nodes"] for k, g in io["graphs"].items()}
        detail = (
            f"{', '.join(f'{k}.onnx {n} nodes' for k, n in nodes.items())}, {size / 2**20:.1f} MiB, {dtype}"
        )
        return (
            "done",
            detail,
            {
                "dir": "onnx",
                "dtype": dtype,
                "opset": io["opset"],
                "bytes": size,
                "nodes": nodes,
                "plugin_nodes": counts,
                "checker": "full_check passed",
            },
        )

    def trt_unavailable(self) -> str | None:
        if not self.trt:
            return "not requested (pass --trt on a GPU host with tensorrt)"
        if not self.target.is_gpu:
            return "cpu target: a TensorRT engine needs a GPU target"
        from builder.trt_engine import trt_unavailable

        assert self.target.sm is not None
        return trt_unavailable(self.target.sm)

    def stage_trt(self) -> tuple[str, str, dict[str, Any]]:
        why = self.trt_unavailable()
        if why:
            return "skipped", why, {}
        from builder.trt_engine import build_trt_engines

        plan = self.plan()
        assert self.target.sm is not None
        batch = plan.batch if self.max_batch_size else min(plan.batch, TRT_DEFAULT_BATCH)
        seq = plan.max_seq_len if self.max_seq_len else min(plan.max_seq_len, TRT_DEFAULT_SEQ_LEN)
        info = build_trt_engines(
            self.stage_dir / "onnx",
            self.stage_dir / "trt",
            sm=self.target.sm,
            max_batch=batch,
            max_tokens=min(TRT_CONTEXT_TOKENS, seq),
            mtp=self.mtp,
            max_seq_len=seq,
        )
        detail = ", ".join(f"{p['file']} {p['bytes'] / 2**20:.1f} MiB" for p in info["plans"].values())
        return "done", detail, info

    def stage_validate(self) -> tuple[str, str, dict[str, Any]]:
        trt = self.validate_trt()
        why = self.validate_unavailable()
        if why:
            return "skipped", why, {"status": "skipped", "reason": why, "output": None, "tensorrt": trt}
        from tensorrt_llm import LLM, SamplingParams  # GPU hosts only

        from builder.trtllm_config import read_llm_api_yaml

        opts = read_llm_api_yaml(self.stage_dir / "trtllm" / "llm_api.yaml")
        llm = LLM(model=str(self.stage_dir / "checkpoint"), **opts)
        try:
            outs = llm.generate([VALIDATE_PROMPT], SamplingParams(max_tokens=8))
            text = outs[0].outputs[0].text
        finally:
            llm.shutdown()
        return (
            "done",
            f"one prompt ran: {text!r}",
            {"status": "passed", "reason": "tensorrt_llm.LLM", "output": text, "tensorrt": trt},
        )

    def validate_trt(self) -> dict[str, Any]:
        """One prompt through the TensorRT engine (trt stage) vs the reference network's greedy tokens."""
        if not self.validate:
            return {"status": "skipped", "reason": "not requested (pass --validate)"}
        if self.state["done"].get("trt", {}).get("status") != "done":
            reason = self.state["done"].get("trt", {}).get("detail", "no trt stage")
            return {"status": "skipped", "reason": f"no TensorRT engine: {reason}"}
        import torch

        from trtllm_nemotron.model import load_model
        from trtllm_nemotron.runtime.onnx_backend import greedy_generate
        from trtllm_nemotron.runtime.tokenizer import Tokenizer
        from trtllm_nemotron.runtime.trt_backend import TrtNetwork

        ckpt = self.stage_dir / "checkpoint"
        assert self.cfg is not None
        prompt = Tokenizer.from_dir(ckpt, vocab_size=self.cfg.vocab_size).encode(VALIDATE_PROMPT)
        net = TrtNetwork(self.stage_dir / "onnx", self.stage_dir / "trt", self.data("trt"))
        got = greedy_generate(net, prompt, VALIDATE_TOKENS, mtp=self.mtp, slot=0)
        model = load_model(ckpt, dtype=torch.bfloat16, device="cuda")
        ids = torch.tensor([prompt], device="cuda")
        ref: list[int] = []
        with torch.inference_mode():
            for _ in range(VALIDATE_TOKENS):  # uncached greedy: the plainest reference
                nxt = int(model(ids)[0, -1].argmax())
                ref.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]], device="cuda")], dim=1)
        same = next((i for i, (a, b) in enumerate(zip(got, ref, strict=True)) if a != b), len(ref))
        # bf16 engines and the bf16 reference round differently, so later tokens may drift; the first must agree
        status = "passed" if same >= 1 else "failed"
        out = {
            "status": status,
            "reason": f"{same}/{len(ref)} leading greedy tokens equal the reference network's",
            "tokens": got,
            "reference_tokens": ref,
        }
        if status == "failed":
            raise BuildError(f"the TensorRT engine's first token differs from the reference network's: {out}")
        return out

    def validate_unavailable(self) -> str | None:
        if not self.validate:
            return "not requested (pass --validate on a GPU host with tensorrt_llm)"
        if not self.target.is_gpu:
            return "cpu target: TensorRT-LLM validation needs a GPU target"
        try:
            import tensorrt_llm  # noqa: F401
        except Exception as e:  # ImportError, or a CUDA-less import failure (libcuda.so.1 missing)
            return f"tensorrt_llm does not import here ({type(e).__name__}: {e})"
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU visible"
        major, minor = torch.cuda.get_device_capability()
        if major * 10 + minor != self.target.sm:
            return f"this GPU is sm_{major}{minor}, the engine targets {self.target.sm_name}"
        return None

    def stage_manifest(self) -> tuple[str, str, dict[str, Any]]:
        assert self.cfg is not None
        plan = self.plan()
        inspect, ckpt = self.data("inspect"), self.data("checkpoint")
        quant = self.data("quantize")["summary"]
        _, kv_fmt = recipe_formats(self.cfg, self.recipe)
        n = self.cfg.num_nextn_predict_layers
        stages = [
            {"name": s, **{k: v for k, v in self.state["done"][s].items() if k != "data"}}
            for s in STAGES
            if s in self.state["done"] and s != "manifest"
        ]
        stages.append(
            {"name": "manifest", "status": "done", "seconds": 0.0, "detail": "build.json written last"}
        )
        trt = None
        if self.target.is_gpu:
            trt = {
                "yaml": "trtllm/llm_api.yaml",
                **self.data("trtllm_config"),
                "llm_args_keys_source": TRTLLM_SOURCE,
            }
        m = {
            "format_version": mf.FORMAT_VERSION,
            "kind": mf.KIND,
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "target": self.target.to_dict(),
            "recipe": {"name": self.recipe, "kv_cache": kv_fmt, "weight_modes": plan.weight_modes},
            "mtp": {
                "max_draft_len": self.mtp,
                "num_nextn_predict_layers": n,
                "mode": None if not self.mtp else ("MTP_EAGLE_ONE_MODEL" if n == 1 else "MTP"),
            },
            "model": {
                "source": str(self.model_dir),
                "family": model_family(self.cfg),
                "architecture": (self.cfg.to_dict().get("architectures") or ["NemotronHForCausalLM"])[0],
                "parameters": self.cfg.parameter_counts(),
            },
            "plan": plan.to_dict(),
            "trtllm": trt,
            "plugins": (
                {"dir": f"plugins/{self.target.sm_name}", "summary": self.data("plugins").get("summary")}
                if self.target.is_gpu
                else None
            ),
            "tools": tool_versions(),
            "onnx": self.data("onnx") or None,
            "tensorrt_engine": self.data("trt") or None,
            "kernel_versions": self.kernel_versions(),
            "inputs": {"dir": str(self.model_dir), "files": inspect["inputs"]},
            "outputs": {"files": mf.hash_tree(self.stage_dir)},
            "stages": stages,
            "quantization": quant,
            "accuracy": ckpt["accuracy"],
            "validation": self.data("validate"),
        }
        if not m["validation"]:
            m["validation"] = {
                "status": "skipped",
                "reason": self.state["done"]["validate"]["detail"],
                "output": None,
            }
        mf.write_manifest(self.stage_dir, m)
        return "done", "build.json written last", {}

    def kernel_versions(self) -> dict[str, str | None]:
        """The TensorRT, Triton and PTX (ISA `.version` of the AOT plugin kernels) versions of this build."""
        from builder.trt_engine import tensorrt_version

        ptx = None
        if self.target.sm_name is not None:
            files = sorted((self.stage_dir / "plugins" / self.target.sm_name).glob("*.ptx"))
            ptx = (
                next(
                    (ln.split()[1] for ln in files[0].read_text().splitlines() if ln.startswith(".version")),
                    None,
                )
                if files
                else None
            )
        return {"tensorrt": tensorrt_version(), "triton": tool_versions()["triton"], "ptx": ptx}

    def plan(self) -> Plan:
        d = self.data("inspect")["plan"]
        assert self.cfg is not None  # set by the checkpoint stage
        return plan_memory(
            self.cfg,
            self.target,
            recipe=self.recipe,
            gpus=d["gpus"],
            max_seq_len=d["max_seq_len"],
            batch=d["batch"],
            mtp=self.mtp,
            max_num_tokens=d["max_num_tokens"],
        )

    # ---- driver ----
    def run(self, resume: bool) -> Path:
        from tqdm import tqdm

        from trtllm_nemotron.checkpoint.reader import read_config

        self.cfg = read_config(self.model_dir / "config.json")  # a bad config fails before any staging dir
        self.load_state(resume)
        bar = tqdm(
            total=len(STAGES),
            desc="build",
            unit="stage",
            file=sys.stderr,
            disable=not self.progress,
            bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| {elapsed}<{remaining}",
        )
        try:
            for i, name in enumerate(STAGES, 1):
                bar.set_description_str(f"build [{name}]")
                done = self.state["done"].get(name)
                if done is not None and name != "manifest":
                    self._log(bar, f"[{i}/{len(STAGES)}] {name}: already done (resumed), skipped")
                    bar.update(1)
                    continue
                fn: Callable[[], tuple[str, str, dict[str, Any]]] = getattr(self, f"stage_{name}")
                t0 = time.perf_counter()
                try:
                    status, detail, data = fn()
                except NemotronError as e:
                    raise type(e)(f"{e}\n(build stage '{name}' failed; {self._hint()})") from e
                except Exception as e:
                    raise BuildError(
                        f"build stage '{name}' failed: {type(e).__name__}: {e}; {self._hint()}"
                    ) from e
                secs = round(time.perf_counter() - t0, 3)
                self.state["done"][name] = {"status": status, "seconds": secs, "detail": detail, "data": data}
                self.save_state()
                self._log(bar, f"[{i}/{len(STAGES)}] {name}: {status} in {secs:.1f}s - {detail}")
                bar.update(1)
        finally:
            bar.close()
        return self.finalize()

    def _hint(self) -> str:
        """What a failed build leaves: nothing when no stage had completed (bad input: --resume cannot help),
        else the staging dir to --resume."""
        if not any(k for k in self.state["done"]):
            shutil.rmtree(self.stage_dir, ignore_errors=True)
            return "nothing was kept; fix the input and rerun"
        return f"the partial build is kept at {self.stage_dir}: rerun with --resume to continue, or without to restart"

    def _log(self, bar: Any, msg: str) -> None:
        if self.progress:
            bar.write(msg, file=sys.stderr)

    def finalize(self) -> Path:
        """Rename the finished staging dir to the output path (moving a previous engine dir aside)."""
        (self.stage_dir / STATE_FILE).unlink(missing_ok=True)
        remove_leftovers(self.stage_dir)
        return replace_dir(self.stage_dir, self.out_dir)


def remove_leftovers(root: Path) -> list[Path]:
    """Remove what killed writers left under `root` (a staging dir whose lock we hold, so no writer is alive):
    `fileio` temp / set-aside dirs, the checkpoint writer's `.shard-*.tmp` files, temp state files."""
    gone = []
    for p in sorted(root.rglob(".*"), key=lambda q: len(q.parts)):
        n = p.name
        if (
            TEMP_MARK in n or OLD_MARK in n or n.endswith(".tmp") or n.startswith(f"{STATE_FILE}.")
        ) and p.exists():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            gone.append(p)
    return gone


def check_writable(d: Path, what: str) -> None:
    """BuildError when `d` (or, when absent, the nearest existing dir above it) cannot be written."""
    p = d
    while not p.exists() and p != p.parent:
        p = p.parent
    if not os.access(p, os.W_OK | os.X_OK):
        raise BuildError(
            f"cannot write {what} {d}: {p} is read-only or not writable by this user; choose another {what}"
        )


def build_engine(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    target: str = "b200",
    recipe: str | None = None,
    mtp: int = 3,
    resume: bool = False,
    validate: bool = False,
    progress: bool = True,
    gpus: int | None = None,
    max_seq_len: int | None = None,
    max_batch_size: int | None = None,
    cache: bool = True,
    calib_samples: int | None = None,
    calib_seq_len: int | None = None,
    onnx: bool = False,
    trt: bool = False,
    preset: str | None = None,
) -> Path:
    """Build the engine dir for `model_dir` at `out_dir` (see module docstring); returns `out_dir`.

    `recipe` defaults to the target's default recipe. `cache` reuses quantized checkpoints and compiled
    plugin kernels from earlier builds (`builder.cache`); `calib_samples` / `calib_seq_len` are passed to
    the quantizer (None: its defaults). `onnx` exports the network to onnx/; `trt` (implies `onnx`) builds
    the TensorRT engine trt/ where TensorRT and a GPU of the target's SM are present (else skipped, with why).
    `preset` (builder.presets) writes NVIDIA's published serving options for the GPU target instead of the
    planner's defaults. Raises BuildError (and the library's other
    NemotronErrors) with what failed and how to fix it; never leaves a half-written `out_dir`.
    """
    t = get_target(target)
    model = Path(model_dir).absolute()
    out = Path(out_dir).absolute()
    if not model.is_dir():
        raise BuildError(f"model dir {model} does not exist; pass a HF checkpoint directory with config.json")
    if os.path.ismount(out):
        raise BuildError(
            f"--out {out} is a mount point: the finished build is renamed onto --out, which cannot "
            f"replace a mount point; use a directory inside it, e.g. --out {out / 'engine'}"
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / mf.MANIFEST).is_file())):
        raise BuildError(
            f"{out} exists and is not an engine dir (no {mf.MANIFEST}); refusing to replace it. "
            "Choose another --out or remove it"
        )
    if out == model or model in out.parents:
        raise BuildError(f"--out {out} must not be the model dir or inside it ({model})")
    if not 0 <= mtp <= MAX_DRAFT_LEN:
        raise BuildError(f"--mtp must be in 0..{MAX_DRAFT_LEN} (draft tokens per step), got {mtp}")
    check_writable(out.parent, "--out")
    b = _Build(
        model,
        out,
        t,
        recipe or t.default_recipe,
        mtp,
        validate=validate,
        progress=progress,
        gpus=gpus,
        max_seq_len=max_seq_len,
        max_batch_size=max_batch_size,
        cache=cache,
        calib_samples=calib_samples,
        calib_seq_len=calib_seq_len,
        onnx=onnx,
        trt=trt,
        preset=preset,
    )
    try:
        with path_lock(out):  # held until the engine is in place; released by the kernel if we are killed
            return b.run(resume)
    except LockHeld as e:  # only path_lock(out) raises it
        raise BuildError(
            f"another build is writing {out} ({e.holder}); wait for it to finish or choose another --out"
        ) from None
