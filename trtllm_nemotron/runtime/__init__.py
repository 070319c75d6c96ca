"""The embedded runtime: load an engine dir or checkpoint, generate, batch continuously, speculate with MTP.

    from trtllm_nemotron.runtime import Engine, SamplingParams
    engine = Engine.load(path, device="cpu", max_batch_size=8, mtp=None)
    engine.generate("def f(x):", SamplingParams(max_tokens=32)).text
    with engine.scheduler() as sched:
        for ev in sched.submit("def f(x):", SamplingParams(max_tokens=32)):
            print(ev.text, end="")

Modules, by responsibility:
- requests: Request, StreamEvent, Completion and the per-request stats; sampling: SamplingParams, sampler;
  tokenizer: tokenizer, chat template, UTF-8-safe streaming, stop strings;
- slots: the hybrid cache pool (sequence slots);
- backend: the `StepBackend` protocol (prefill, decode, verify, commit, MTP draft) and its registry;
  torch_backend: "eager", the reference network's modules (the CUDA path); native: "native", the C++ CPU step;
  onnx_backend: "onnx", the exported ONNX graphs on CPU; trt_backend: "tensorrt", their TensorRT engines (GPU);
- engine: `Engine`, the generation loop (prefill / decode / MTP verification, emission);
  loading: engine dir or checkpoint -> model, tokenizer, EOS ids, MTP setting;
- scheduler: the continuous-batching thread, on the engine's public API.
"""

from __future__ import annotations

# importing them registers the built-in backends (native first: the CPU default; onnx / tensorrt only by name)
from trtllm_nemotron.runtime import native, onnx_backend, torch_backend, trt_backend  # noqa: F401
from trtllm_nemotron.runtime.backend import BACKENDS, StepBackend, StepBackendBase, register
from trtllm_nemotron.runtime.engine import Engine
from trtllm_nemotron.runtime.requests import Completion, Request, StreamEvent
from trtllm_nemotron.runtime.sampling import SamplingParams
from trtllm_nemotron.runtime.scheduler import RequestHandle, Scheduler

__all__ = [
    "BACKENDS",
    "Completion",
    "Engine",
    "Request",
    "RequestHandle",
    "SamplingParams",
    "Scheduler",
    "StepBackend",
    "StepBackendBase",
    "StreamEvent",
    "register",
]
