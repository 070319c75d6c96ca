"""Request types: what a caller submits and gets back, and the engine's per-request state and stats.

`Request` is one request inside the engine (created by `Engine.new_request`, driven by `Engine.iterate`);
`StreamEvent`s are what an iteration produces for it; `Completion` is a whole answer. `request_stats` gives
the stats dict every final event and completion carries (trtllm-bench's acceptance accounting, spec §6.3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from trtllm_nemotron.runtime.sampling import SamplingParams
from trtllm_nemotron.runtime.tokenizer import IncrementalDetokenizer, StopStringFilter


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    stats: dict[str, Any]


@dataclass
class StreamEvent:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stats: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Request:
    """One request inside the engine. `finish_reason` is set once it has ended (the only field callers
    outside the engine read)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    detok: IncrementalDetokenizer
    stops: StopStringFilter
    t_submit: float = field(default_factory=time.perf_counter)
    slot: int = -1
    prefilled: int = 0  # prompt tokens already in the cache
    pending: int = -1  # last sampled token, not yet in the cache (-1 until the prefill samples one)
    drafts: list[int] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    n_generated: int = 0  # tokens produced, EOS included
    iters: int = 0  # decode forwards after the prefill
    t_first: float | None = None
    t_end: float | None = None
    finish_reason: str | None = None
    # prefix cache (runtime/prefix_cache.py)
    block_keys: list[bytes] = field(default_factory=list)  # hash-chain keys of the prompt's whole blocks
    prefix_reused: int = 0  # prompt tokens restored from the prefix cache
    prefix_eligible: int = 0  # whole prompt blocks the prefix cache could have served
    mtp_h: torch.Tensor | None = None  # restored prefix: h of its last position, the MTP block's next input
    consumed: list[int] = field(default_factory=list)  # generated tokens written into the cache, in order

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def request_stats(req: Request, *, backend: str, mtp: int) -> dict[str, Any]:
    """Timing and speculation stats of a request (so far, or final once it has ended).

    With `iters` verification forwards after prefill: acceptance_length = tokens / (iters + 1),
    draft_tokens = K·(iters + 1), accepted = tokens − iters − 1, acceptance_rate = accepted / draft_tokens
    (tokens counts an EOS token too)."""
    end = req.t_end or time.perf_counter()
    n = len(req.out_ids)
    ttft = (req.t_first - req.t_submit) if req.t_first is not None else None
    e2e = end - req.t_submit
    decode_s = end - req.t_first if req.t_first is not None else 0.0
    st: dict[str, Any] = {
        "num_tokens": n,
        "prompt_tokens": len(req.prompt_ids),
        "ttft_s": ttft,
        "e2e_s": e2e,
        # decode speed: tokens after the first over the time after the first (all of them if only one)
        "tokens_per_s": ((n - 1) / decode_s if n > 1 and decode_s > 0 else (n / e2e if e2e > 0 else 0.0)),
        "acceptance_rate": None,
        "acceptance_length": None,
        "accepted_draft_tokens": 0,
        "draft_tokens": 0,
        "decode_iterations": req.iters,
        "backend": backend,
        "prefix_reused_tokens": req.prefix_reused,
    }
    if mtp and req.n_generated:
        fwd = req.iters + 1
        drafted = mtp * fwd
        accepted = max(0, req.n_generated - fwd)
        st.update(
            acceptance_length=req.n_generated / fwd,
            draft_tokens=drafted,
            accepted_draft_tokens=accepted,
            acceptance_rate=accepted / drafted,
        )
    return st
