"""The `tensorrt` backend: the engines `build --trt` wrote (`<engine>/trt/sm_<N>.plan`, `.mtp.plan`), run with
TensorRT's Python runtime on a CUDA GPU (GPU hosts only; nothing here is imported elsewhere).

`TrtNetwork.from_engine_dir(engine_dir)` has `OnnxNetwork`'s interface (`forward`, `mtp`, `snapshot`, `restore`; numpy outputs),
so `onnx_backend.greedy_generate` drives either. The state pools are torch CUDA tensors allocated from io.json
with the pool size and context the engine was built for (build.json `tensorrt`); each state's input and its
`present_*` output are bound to the same buffer (`set_tensor_address` twice), so the plugins and the KV
scatter update them in place, as Edge-LLM's runtime binds past and present state (specs/trt_engine.md §2.5).
Profile 0 (context) runs one sequence of up to `max_tokens` tokens, profile 1 (generation) up to `max_batch`
sequences of 1 + mtp tokens (builder/trt_engine.py).

`TrtBackend` is the engine's `tensorrt` step backend: `Engine.load(engine_dir, device="cuda", backend="tensorrt")`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime.backend import register
from trtllm_nemotron.runtime.onnx_backend import GraphStepBackend

_TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "int32": "int32"}


class _TrtGraph:
    def __init__(self, trt: Any, plan: Path, meta: dict[str, Any], pool: int, max_seq_len: int) -> None:
        import torch

        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise RuntimeStateError(f"TensorRT could not deserialize {plan}; rebuild it with `build --trt`")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.meta = meta
        self.profile = -1
        dims = {"pool": pool, "max_seq_len": max_seq_len}
        self.state: dict[str, Any] = {}
        for e in meta["inputs"]:
            if e["role"] in ("kv_cache", "conv_state", "ssm_state"):
                shape = [dims[s] if isinstance(s, str) else s for s in e["shape"]]
                dt = getattr(torch, _TORCH_DTYPES[e["dtype"]])
                self.state[e["name"]] = torch.zeros(shape, dtype=dt, device="cuda")
        self.mamba = [e["name"] for e in meta["inputs"] if e["role"] in ("conv_state", "ssm_state")]

    def run(self, feeds: dict[str, np.ndarray], tokens: int, gen_tokens: int) -> dict[str, np.ndarray]:
        import torch

        ctx = self.context
        profile = 1 if tokens <= gen_tokens and self.engine.num_optimization_profiles > 1 else 0
        if profile != self.profile:
            ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self.profile = profile
        keep = []
        for name, arr in feeds.items():
            a = np.ascontiguousarray(arr)
            t = (
                torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
                if a.dtype.name == "bfloat16"
                else None
            )
            t = (torch.from_numpy(a) if t is None else t).cuda()
            keep.append(t)
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        for name, buf in self.state.items():  # past and present: one buffer (in place)
            ctx.set_input_shape(name, tuple(buf.shape))
            ctx.set_tensor_address(name, buf.data_ptr())
            ctx.set_tensor_address(f"present_{name}", buf.data_ptr())
        outs = {}
        for e in self.meta["outputs"]:
            if e["name"].startswith("present_"):
                continue
            shape = tuple(ctx.get_tensor_shape(e["name"]))
            outs[e["name"]] = torch.empty(
                shape, dtype=getattr(torch, _TORCH_DTYPES[e["dtype"]]), device="cuda"
            )
            ctx.set_tensor_address(e["name"], outs[e["name"]].data_ptr())
        torch.cuda.current_stream().synchronize()
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeStateError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self.stream.synchronize()
        del keep
        return {k: v.float().cpu().numpy() for k, v in outs.items()}


class TrtNetwork:
    """The TensorRT engines of an engine dir with their state pools (see the module docstring)."""

    def __init__(self, onnx_dir: str | Path, trt_dir: str | Path, info: dict[str, Any]) -> None:
        """onnx_dir: the engine dir's onnx/ (io.json); trt_dir: its trt/; info: build.json `tensorrt_engine`."""
        try:
            import tensorrt as trt
        except Exception as e:
            raise RuntimeStateError(f"the tensorrt backend needs tensorrt on a GPU host ({e})") from e
        if not info.get("plans"):
            raise RuntimeStateError(
                f"no TensorRT engine in {trt_dir}; build with `trtllm-nemotron build --onnx --trt`"
            )
        io = json.loads((Path(onnx_dir) / "io.json").read_text())
        self.pool, self.max_seq_len = int(info["pool"]), int(info["max_seq_len"])
        self.gen_tokens = int(info["profiles"][1]["tokens"][2])
        plans = {k: Path(trt_dir) / Path(v["file"]).name for k, v in info["plans"].items()}
        self.backbone = _TrtGraph(trt, plans["model"], io["graphs"]["model"], self.pool, self.max_seq_len)
        self.mtp_graph = (
            _TrtGraph(trt, plans["mtp"], io["graphs"]["mtp"], self.pool, self.max_seq_len)
            if "mtp" in plans
            else None
        )

    @classmethod
    def from_engine_dir(cls, engine_dir: str | Path) -> TrtNetwork:
        d = Path(engine_dir)
        manifest = json.loads((d / "build.json").read_text())
        return cls(d / "onnx", d / "trt", manifest.get("tensorrt_engine") or {})

    @staticmethod
    def _feeds(ids: Any, past: list[int], slots: list[int]) -> dict[str, np.ndarray]:
        return {
            "input_ids": np.asarray(ids, dtype=np.int32),
            "past_lengths": np.asarray(past, dtype=np.int32),
            "slot_idx": np.asarray(slots, dtype=np.int32),
        }

    def forward(
        self, ids: list[list[int]], past: list[int], slots: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        fresh = [s for s, p in zip(slots, past, strict=True) if p == 0]
        for name in self.backbone.mamba if fresh else ():
            self.backbone.state[name][fresh] = 0
        out = self.backbone.run(self._feeds(ids, past, slots), len(ids[0]), self.gen_tokens)
        return out["logits"], out["hidden_states"]

    def mtp(self, hidden: np.ndarray, next_ids: list[list[int]], past: list[int], slots: list[int]):
        if self.mtp_graph is None:
            raise RuntimeStateError("this engine has no MTP plan; build it with --mtp > 0")
        feeds = self._feeds(next_ids, past, slots)
        import ml_dtypes

        dt = next(e["dtype"] for e in self.mtp_graph.meta["inputs"] if e["name"] == "hidden_states")
        feeds["hidden_states"] = np.asarray(
            hidden, dtype=ml_dtypes.bfloat16 if dt == "bfloat16" else np.float32
        )
        out = self.mtp_graph.run(feeds, len(next_ids[0]), self.gen_tokens)
        return out["logits"], out["mtp_hidden_states"]

    def snapshot(self, slots: list[int]) -> dict[str, Any]:
        return {n: self.backbone.state[n][slots].clone() for n in self.backbone.mamba}

    def restore(self, slots: list[int], snap: dict[str, Any]) -> None:
        for n, v in snap.items():
            self.backbone.state[n][slots] = v


def _engine_info(model) -> tuple[Path | None, dict[str, Any]]:
    """The engine dir the model was loaded from and its build.json `tensorrt_engine` entry ({} if none)."""
    src = getattr(model, "source_path", None)
    if not src:
        return None, {}
    d = Path(src).parent
    try:
        manifest = json.loads((d / "build.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None, {}
    return d, manifest.get("tensorrt_engine") or {}


class TrtBackend(GraphStepBackend):
    """The engine's steps through the TensorRT engines of the engine dir the model was loaded from
    (`Engine.load(engine_dir, device="cuda", backend="tensorrt")`): `TrtNetwork` with its device state pools,
    at the slot pool's committed lengths (runtime/onnx_backend.py `GraphStepBackend`)."""

    name = "tensorrt"

    @classmethod
    def unsupported_reason(cls, model, pool) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except Exception as e:
            return f"tensorrt does not import here ({type(e).__name__}: {e})"
        if model.backbone.embeddings.weight.device.type != "cuda":
            return "the tensorrt backend runs on a CUDA device; load with device='cuda'"
        d, info = _engine_info(model)
        if not info.get("plans"):
            return "the model was not loaded from an engine dir with a TensorRT engine (build --onnx --trt)"
        import torch

        major, minor = torch.cuda.get_device_capability()
        if not info["plans"]["model"]["file"].endswith(f"sm_{major}{minor}.plan"):
            return f"the engine was built as {info['plans']['model']['file']}, this GPU is sm_{major}{minor}"
        c = pool.cache
        if c.batch_size > int(info["pool"]) or c.max_seq_len > int(info["max_seq_len"]):
            return (
                f"the slot pool ({c.batch_size} rows x {c.max_seq_len}) exceeds the engine's state pools "
                f"({info['pool']} x {info['max_seq_len']}); load with a smaller max_batch_size / max_seq_len"
            )
        if pool.mtp and "mtp" not in info["plans"]:
            return "MTP asked for, but the engine has no MTP plan (build with --mtp > 0)"
        return None

    def __init__(self, model, pool) -> None:
        super().__init__(model, pool)
        d, info = _engine_info(model)
        assert d is not None
        self.net = TrtNetwork(d / "onnx", d / "trt", info)


register(TrtBackend)
