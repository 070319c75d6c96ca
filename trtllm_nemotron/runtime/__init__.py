"""The embedded runtime: load an engine dir or checkpoint, generate, batch continuously, speculate with MTP.

    from trtllm_nemotron.runtime import Engine, SamplingParams
    engine = Engine.load(path, device="cpu", max_batch_size=8, mtp=None)
    engine.generate("def f(x):", SamplingParams(max_tokens=32)).text
    with engine.scheduler() as sched:
        for ev in sched.submit("def f(x):", SamplingParams(max_tokens=32)):
            print(ev.text, end="")

Modules: sampling (SamplingParams, sampler), tokenizer (tokenizer, chat template, UTF-8-safe streaming, stop
strings), slots (the hybrid cache pool), step (the batched decode/verify step on flat weights), engine
(Engine, prefill/decode/MTP loop, stats), scheduler (continuous batching thread).
"""

from __future__ import annotations

from trtllm_nemotron.runtime.engine import Completion, Engine, StreamEvent
from trtllm_nemotron.runtime.sampling import SamplingParams
from trtllm_nemotron.runtime.scheduler import RequestHandle, Scheduler

__all__ = ["Completion", "Engine", "RequestHandle", "SamplingParams", "Scheduler", "StreamEvent"]
