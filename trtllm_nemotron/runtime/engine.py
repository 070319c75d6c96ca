"""`Engine`: the generation loop over a loaded model -- requests, prefill, decode, sampling, MTP speculation.

The engine owns requests (runtime/requests.py), sampling, acceptance and emission; the maths of each step
belong to a `StepBackend` (runtime/backend.py): "native" (the C++ CPU step, runtime/native) or "eager" (the
reference network's modules, runtime/torch_backend.py: the CUDA path and the CPU fallback); `backend="auto"`
(the default) takes native wherever it can run (CPU, float32 weights and caches, a C++ compiler, the plugin
kernels not forced), else eager. Loading is runtime/loading.py; continuous batching runtime/scheduler.py.

Flow of one request, driven by `Engine.iterate` (one scheduler iteration; `generate` and the
continuous-batching `Scheduler` both call it):
1. prefill: the prompt runs through `step.prefill` in chunks of `prefill_chunk` tokens, one chunk per
   iteration, so a long prompt never stalls the decoding requests. The last chunk's logits give the first
   token. With MTP, every chunk also runs the MTP block over its (h_t, x_{t+1}) pairs, and the last position
   drafts `max_draft_len` tokens by applying the MTP block recursively (spec §4.7, TRT-LLM MTP_EAGLE_ONE_MODEL).
2. decode: all decoding requests run together in one batched step:
   - without MTP: one token per row (the last sampled one), `step.decode` / `step.decode_greedy`;
   - with MTP: 1 + K tokens per row ([last token, d_1..d_K]) through `step.verify`; the target tokens are
     sampled at every position and the longest prefix with d_i == target_{i-1} is accepted plus one target
     token (spec §6.2, greedy strict acceptance; with sampling, target tokens are drawn from the target
     distribution, so the output distribution is the target's); `step.commit` keeps the accepted prefix;
     the MTP block then runs over the K+1 new (h, token) pairs and the entry of the last accepted position
     drafts the next K tokens. All-greedy batches take `step.spec_greedy` (one call on the native backend).
3. every new token goes through EOS / stop-string / max_tokens checks and the UTF-8-safe detokenizer.

Public API for drivers (generate, stream, the scheduler, servers): `new_request`, `try_admit`, `iterate`,
`finish`, `stats`, `num_free_slots`. Each takes the engine's lock, so callers never lock anything themselves; a
request's slot is freed when it finishes inside `iterate` or is ended with `finish`. `stream` runs one request
on the caller's thread (the CLI); the scheduler steps many on its own thread (servers).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch

from trtllm_nemotron.config import MAX_DRAFT_LEN
from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime import backend as backends
from trtllm_nemotron.runtime.requests import Completion, Request, StreamEvent, request_stats
from trtllm_nemotron.runtime.sampling import SamplingParams, sample_tokens
from trtllm_nemotron.runtime.slots import SlotPool
from trtllm_nemotron.runtime.tokenizer import IncrementalDetokenizer, StopStringFilter, Tokenizer

log = logging.getLogger(__name__)


class Engine:
    """A loaded model, its slot pool, step backend, tokenizer and generation loop (see the module docstring)."""

    def __init__(
        self,
        model,
        tokenizer: Tokenizer,
        *,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        mtp: int = 0,
        ssm_dtype: torch.dtype = torch.float32,
        prefill_chunk: int = 256,
        eos_token_ids: list[int] | None = None,
        source: str = "",
        backend: str = "auto",
        prefix_cache_mb: float | None = 0.0,
        prefix_block: int = 64,
    ) -> None:
        cfg = model.config
        self.model = model
        self.config = cfg
        self.tokenizer = tokenizer
        self.source = source
        if max_seq_len is None:
            max_seq_len = min(cfg.max_position_embeddings, 4096)
        if max_seq_len < 2:
            raise RuntimeStateError(f"max_seq_len must be >= 2, got {max_seq_len}")
        if mtp < 0 or mtp > MAX_DRAFT_LEN:
            raise RuntimeStateError(f"mtp (max_draft_len) must be in 0..{MAX_DRAFT_LEN}, got {mtp}")
        if mtp and not cfg.num_nextn_predict_layers:
            raise RuntimeStateError(
                f"mtp={mtp} asked for, but this model has no MTP layers (num_nextn_predict_layers = 0); "
                "use mtp=0"
            )
        if mtp and set(cfg.mtp_pattern) - set("*E-"):
            raise RuntimeStateError(
                f"MTP pattern {cfg.mtp_pattern!r} has Mamba layers; the runtime supports * E -"
            )
        if prefill_chunk < 1:
            raise RuntimeStateError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        if backend not in backends.backend_names():
            raise RuntimeStateError(f"backend must be one of {backends.backend_names()}, got {backend!r}")
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self.mtp = mtp
        self.prefill_chunk = prefill_chunk
        self.device = model.backbone.embeddings.weight.device
        self.pool = SlotPool(model, max_batch_size, max_seq_len, mtp=mtp, ssm_dtype=ssm_dtype)
        ids = set(cfg.eos_token_ids) if eos_token_ids is None else set(eos_token_ids)
        ids.update(tokenizer.eos_token_ids())
        self.eos_token_ids = sorted(ids)
        self._lock = threading.RLock()
        self._ids = itertools.count()
        cls = backends.select(backend, model, self.pool)
        self.step: backends.StepBackendBase = cls(model, self.pool)
        self.backend: str = cls.name
        self.prefix = self._prefix_cache(prefix_cache_mb, prefix_block, ssm_dtype)

    def _prefix_cache(self, mb: float | None, block: int, ssm_dtype: torch.dtype):
        """The prefix cache (runtime/prefix_cache.py): None when mb == 0; mb None = the default budget."""
        if mb is not None and mb < 0:
            raise RuntimeStateError(
                f"prefix_cache_mb must be >= 0 (0 turns the prefix cache off, None picks the default budget), "
                f"got {mb}"
            )
        if mb == 0:
            return None
        from trtllm_nemotron.runtime.prefix_cache import PrefixCache, default_budget_bytes

        if block < 1:
            raise RuntimeStateError(f"prefix_block must be >= 1 token, got {block}")
        if mb is None:
            budget = default_budget_bytes(
                self.config,
                block,
                mtp=bool(self.mtp),
                max_batch_size=self.max_batch_size,
                max_seq_len=self.max_seq_len,
                dtype=self.model.backbone.embeddings.weight.dtype,
                ssm_dtype=ssm_dtype,
            )
        else:
            budget = int(mb * 2**20)
        return PrefixCache(
            self.pool.cache,
            self.pool.mtp_cache,
            block_size=block,
            budget_bytes=budget,
            hidden_size=self.config.hidden_size,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | str | None = None,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        mtp: int | None = None,
        ssm_dtype: torch.dtype | str = "float32",
        prefill_chunk: int = 256,
        backend: str = "auto",
        prefix_cache_mb: float | None = 0.0,
        prefix_block: int = 64,
    ) -> Engine:
        """Load an engine dir (build.json + checkpoint/) or a plain HF checkpoint dir (BF16 / FP8 / NVFP4).

        dtype None: float32 on CPU, bfloat16 on CUDA. mtp None: the engine's MTP setting (build.json
        `mtp.max_draft_len`); for a plain checkpoint with MTP layers, 3 (the build default); 0 turns it off.
        backend: the step backend -- "native" (the C++ CPU step), "eager" (the reference network's modules,
        which run the plugin kernels on CUDA), or "auto" (native where it can run, else eager).
        prefix_cache_mb: the prefix cache's budget in MiB (runtime/prefix_cache.py); 0 = off, None = the
        default budget (as many prefix tokens as the slots hold); prefix_block: tokens per cached block.
        """
        from trtllm_nemotron.runtime import loading

        t0 = time.perf_counter()
        ld = loading.load(path, device=device, dtype=dtype, mtp=mtp)
        eng = cls(
            ld.model,
            ld.tokenizer,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            mtp=ld.mtp,
            ssm_dtype=loading.parse_dtype(ssm_dtype) or torch.float32,
            prefill_chunk=prefill_chunk,
            eos_token_ids=ld.eos_token_ids,
            source=str(path),
            backend=backend,
            prefix_cache_mb=prefix_cache_mb,
            prefix_block=prefix_block,
        )
        log.info(
            "loaded %s in %.2fs (%s, %s, %s step, mtp=%d, %d slots x %d tokens, cache %.1f MiB)",
            path,
            time.perf_counter() - t0,
            eng.device,
            ld.model.backbone.embeddings.weight.dtype,
            eng.backend,
            eng.mtp,
            max_batch_size,
            eng.max_seq_len,
            eng.pool.memory_report()["total"] / 2**20,
        )
        return eng

    def memory_report(self) -> dict[str, int]:
        """Bytes of the slot pool's caches per kind (+ `prefix_cache`: the prefix cache's budget, when on)."""
        rep = self.pool.memory_report()
        if self.prefix is not None:
            rep["prefix_cache"] = self.prefix.budget_bytes
        return rep

    # ------------------------------------------------------------------ requests
    def new_request(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> Request:
        """Validate and tokenize a request (RuntimeStateError for bad options or an over-long prompt)."""
        if not isinstance(params, SamplingParams):
            raise RuntimeStateError(f"params must be a SamplingParams, got {type(params).__name__}")
        params.validate()
        ids = list(prompt) if isinstance(prompt, (list, tuple)) else self.tokenizer.encode(prompt)
        if not ids:
            raise RuntimeStateError("the prompt is empty (0 tokens); give at least one token of text")
        bad = [i for i in ids if not 0 <= int(i) < self.config.vocab_size]
        if bad:
            raise RuntimeStateError(
                f"prompt token ids {bad[:5]} are outside the vocabulary 0..{self.config.vocab_size - 1}"
            )
        if len(ids) >= self.max_seq_len:
            raise RuntimeStateError(
                f"prompt is {len(ids)} tokens but the engine's max_seq_len is {self.max_seq_len} "
                f"(prompt + at least "
                f"one generated token must fit); shorten the prompt or load with a larger max_seq_len"
            )
        if request_id is None:
            request_id = f"req-{next(self._ids)}"
        gen = None if params.greedy else params.make_generator()
        return Request(
            request_id,
            ids,
            params,
            gen,
            IncrementalDetokenizer(self.tokenizer),
            StopStringFilter(params.stop),
        )

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None) -> Completion:
        """Blocking, single request."""
        req = self.new_request(prompt, params or SamplingParams())
        text = "".join(ev.text for ev in self._run(req))
        return Completion(text, list(req.out_ids), cast(str, req.finish_reason), self.stats(req))

    def stream(
        self, prompt: str | list[int], params: SamplingParams | None = None, *, request_id: str | None = None
    ) -> Iterator[StreamEvent]:
        """One request stepped on the caller's thread, its `StreamEvent`s yielded as each iteration produces
        them: no stepping thread, no queue, no wake-up per token (what a single local consumer such as the
        CLI wants; the scheduler is for many concurrent requests). Options and the prompt are checked here, at
        the call; the engine is held from the first event to the last. Closing the iterator early (`break`,
        KeyboardInterrupt) ends the request as "cancelled" and frees its slot. Consume it on one thread."""
        return self._run(self.new_request(prompt, params or SamplingParams(), request_id))

    def _run(self, req: Request) -> Iterator[StreamEvent]:
        with self._lock:
            self.admit(req)
            try:
                while req.finish_reason is None:
                    for _, ev in self.iterate([req]):
                        yield ev
            finally:
                if req.finish_reason is None:  # the consumer stopped early
                    self.finish(req, "cancelled")
                self.release(req)

    def generate_batch(
        self, prompts: list[str | list[int]], params: SamplingParams | None = None
    ) -> list[Completion]:
        """Blocking, a static batch (len(prompts) <= max_batch_size): every prompt is prefilled first, then
        all decode together in one batched step per iteration until each finishes (what a benchmark of
        batch-N decode wants; the scheduler is the continuous-batching path)."""
        params = params or SamplingParams()
        if len(prompts) > self.max_batch_size:
            raise RuntimeStateError(f"{len(prompts)} prompts but max_batch_size is {self.max_batch_size}")
        reqs = [self.new_request(p, params) for p in prompts]
        pieces: dict[int, list[str]] = {id(r): [] for r in reqs}
        with self._lock:
            try:
                for r in reqs:
                    self.admit(r)
                while any(r.in_prefill for r in reqs):
                    for r, ev in self.iterate([r for r in reqs if r.in_prefill]):
                        pieces[id(r)].append(ev.text)
                now = time.perf_counter()
                for r in reqs:  # time the batch from the moment every request has its first token
                    assert r.t_first is not None  # the prefill emitted the first token
                    r.t_submit, r.t_first = r.t_submit + (now - r.t_first), now
                while any(r.finish_reason is None for r in reqs):
                    for r, ev in self.iterate([r for r in reqs if r.finish_reason is None]):
                        pieces[id(r)].append(ev.text)
            finally:
                for r in reqs:
                    self.release(r)
        return [
            Completion("".join(pieces[id(r)]), list(r.out_ids), cast(str, r.finish_reason), self.stats(r))
            for r in reqs
        ]

    @property
    def num_free_slots(self) -> int:
        with self._lock:
            return self.pool.num_free

    def admit(self, req: Request) -> None:
        """Give the request a slot (RuntimeStateError when every slot is busy); with the prefix cache, restore
        the longest cached prefix of its prompt into that slot."""
        with self._lock:
            req.slot = self.pool.acquire()
            if self.prefix is not None:
                from trtllm_nemotron.runtime.prefix_cache import block_keys

                hit = self.prefix.lookup(req.prompt_ids)
                req.block_keys = block_keys(req.prompt_ids, self.prefix.block_size)
                req.prefix_eligible = hit.eligible
                if hit.blocks:
                    req.mtp_h = self.prefix.restore(hit, req.slot)
                    req.prefilled = req.prefix_reused = hit.tokens

    def try_admit(self, req: Request) -> bool:
        """Give the request a slot if one is free; False (nothing changed) when every slot is busy."""
        with self._lock:
            if self.pool.num_free == 0:
                return False
            self.admit(req)
            return True

    def release(self, req: Request) -> None:
        """Free the request's slot (idempotent)."""
        with self._lock:
            if req.slot >= 0:
                self.pool.release(req.slot)
                req.slot = -1

    def finish(self, req: Request, reason: str, error: str | None = None) -> StreamEvent:
        """End a request from outside the loop (cancel / error): its slot is freed; -> its final event."""
        with self._lock:
            req.finish_reason = reason
            req.t_end = time.perf_counter()
            self.release(req)
            return StreamEvent("", [], reason, self.stats(req), error)

    def stats(self, req: Request) -> dict[str, Any]:
        st = request_stats(req, backend=self.backend, mtp=self.mtp)
        if self.prefix is not None:  # the llmapi model's kv_cache_* outputs
            B = self.prefix.block_size
            reused = req.prefix_reused // B
            total = -(-(len(req.prompt_ids) + len(req.out_ids)) // B)
            st.update(
                kv_cache_reused_block=reused,
                kv_cache_missed_block=req.prefix_eligible - reused,
                kv_cache_alloc_new_blocks=total - reused,
                kv_cache_alloc_total_blocks=total,
                kv_cache_hit_rate=reused / req.prefix_eligible if req.prefix_eligible else 0.0,
            )
        return st

    def scheduler(self, **kw: Any):
        from trtllm_nemotron.runtime.scheduler import Scheduler

        return Scheduler(self, **kw)

    # ------------------------------------------------------------------ one iteration
    @torch.inference_mode()
    def iterate(self, reqs: list[Request]) -> list[tuple[Request, StreamEvent]]:
        """One scheduler iteration over admitted, unfinished requests: one prefill chunk (the oldest request
        still in prefill) and one batched decode step for every request that was already decoding. Returns
        the events produced, in order; a finished request's last event has finish_reason and stats, and its
        slot is free again."""
        with self._lock:
            events: list[tuple[Request, StreamEvent]] = []
            decoding = [r for r in reqs if not r.in_prefill and r.finish_reason is None]
            pre = next((r for r in reqs if r.in_prefill and r.finish_reason is None), None)
            with self._glue_threads():
                if pre is not None:
                    self._prefill_chunk(pre, events)
                if decoding:
                    if self.mtp:
                        self._verify(decoding, events)
                    else:
                        self._decode(decoding, events)
            for r, ev in events:
                if ev.finish_reason is not None:
                    if self.prefix is not None and r.pending is not None:
                        # the tail snapshot: the state after everything consumed, and the next token
                        self.prefix.insert_finished(r.prompt_ids + r.consumed, r.pending, r.slot)
                    self.release(r)
            return events

    @contextlib.contextmanager
    def _glue_threads(self):
        """Around an iteration's torch ops between native steps (prefill's logits, cache-length updates,
        drafting, sampling): one intra-op thread. They are small (one row's LM head), and torch's OpenMP pool
        spins after each parallel op on the thread that ran it; beside the native step's own threads on few
        cores that made each such op cost ~1-25 ms on a busy 2-core host (a [1, 256] x [256, 4096] matmul:
        24.6 ms) and `generate_batch` on the main thread 3x slower than on a fresh thread (whose OpenMP pool
        libgomp does not let spin). The native step keeps its own threads."""
        if self.backend != "native" or self.device.type != "cpu":
            yield
            return
        n = torch.get_num_threads()
        if n > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if n > 1:
                torch.set_num_threads(n)

    def _prefill_chunk(self, req: Request, events) -> None:
        """Up to `prefill_chunk` prompt tokens. With the prefix cache the chunk runs in pieces that end on block
        boundaries, and each whole prompt block is snapshotted right after it ran (complete before published)."""
        s, e = req.prefilled, min(len(req.prompt_ids), req.prefilled + self.prefill_chunk)
        if self.prefix is None:
            self._prefill_piece(req, s, e, events)
            return
        B = self.prefix.block_size
        while s < e:
            stop = min(e, (s // B + 1) * B)
            h_last = self._prefill_piece(req, s, stop, events)[:, -1]
            b = stop // B - 1
            if stop % B == 0 and b < len(req.block_keys) and not self.prefix.contains(req.block_keys[b]):
                parent = req.block_keys[b - 1] if b else None
                self.prefix.insert(
                    req.block_keys[b], parent, req.prompt_ids[stop - B : stop], req.slot, h_last
                )
            s = stop

    def _prefill_piece(self, req: Request, s: int, e: int, events) -> torch.Tensor:
        """Prompt tokens s..e through the backbone (and the MTP block); the last piece of the prompt samples.
        -> the final-normed hidden states [1, T, hidden] of the piece."""
        step = self.step
        h = step.prefill(req.prompt_ids[s:e], req.slot)  # [1, T, hidden]
        req.prefilled = e
        last = e == len(req.prompt_ids)
        # MTP pairs (h_t, x_{t+1}); after a restored prefix, the pair at the prefix's last position comes first
        hh, first = h, s + 1
        if self.mtp and req.mtp_h is not None:
            hh, first, req.mtp_h = torch.cat([req.mtp_h.to(h.dtype), h], dim=1), s, None
        nxt = req.prompt_ids[first : e + 1]
        if not last:
            if self.mtp:
                step.mtp(hh, torch.tensor([nxt], device=self.device), [req.slot], logits=False)
            return h
        tok = self._sample(req, self.model.logits(h[:, -1]))[0]
        req.pending = tok
        if self.mtp:
            g, _ = step.mtp(hh, torch.tensor([nxt + [tok]], device=self.device), [req.slot], logits=False)
            dl = self.model.logits(g[:, -1])
            req.drafts = step.draft_after_prefill(g[:, -1:], dl, [req.slot])[0]
        self._emit(req, [tok], events)
        return h

    def _decode(self, reqs: list[Request], events) -> None:
        slots = [r.slot for r in reqs]
        tokens = [r.pending for r in reqs]
        if all(r.params.greedy for r in reqs):
            toks = self.step.decode_greedy(tokens, slots)
        else:
            logits = self.step.decode(tokens, slots)
            toks = [self._sample(r, logits[b : b + 1])[0] for b, r in enumerate(reqs)]
        for r, t in zip(reqs, toks, strict=True):
            r.iters += 1
            if self.prefix is not None:
                r.consumed.append(r.pending)
            r.pending = t
            self._emit(r, [t], events)

    def _verify(self, reqs: list[Request], events) -> None:
        slots = [r.slot for r in reqs]
        tokens = [[r.pending] + r.drafts for r in reqs]
        if all(r.params.greedy for r in reqs):
            targets, accept, drafts = self.step.spec_greedy(tokens, slots)
            return self._emit_verified(reqs, targets, accept, drafts, events)
        start = self.pool.cache.lengths[torch.tensor(slots, device=self.device)].clone()
        h, logits = self.step.verify(tokens, slots)  # [batch, K+1, ...]
        targets, accept = [], []
        for b, r in enumerate(reqs):
            y = self._sample(r, logits[b])
            j = 0
            while j < self.mtp and r.drafts[j] == y[j]:
                j += 1
            targets.append(y)
            accept.append(j)
        keep = [j + 1 for j in accept]
        self.step.commit(slots, keep)
        drafts = self.step.draft_after_verify(h, targets, slots, start, keep)
        self._emit_verified(reqs, targets, accept, drafts, events)

    def _emit_verified(self, reqs: list[Request], y, acc, drafts, events) -> None:
        """After a verification: row i keeps targets y[i][: acc[i] + 1] and drafts[i] for the next iteration."""
        for i, r in enumerate(reqs):
            r.iters += 1
            new = y[i][: acc[i] + 1]
            if self.prefix is not None:  # the cache now holds [pending, d_1..d_acc] = [pending] + y[:acc]
                r.consumed += [r.pending, *new[:-1]]
            r.pending = new[-1]
            r.drafts = drafts[i]
            self._emit(r, new, events)

    # ------------------------------------------------------------------ sampling and output
    def _sample(self, req: Request, logits: torch.Tensor) -> list[int]:
        if req.params.greedy:
            return logits.argmax(-1).tolist()
        return sample_tokens(logits.float().cpu(), req.params, req.generator)

    def _emit(self, req: Request, new: list[int], events) -> None:
        if req.t_first is None:
            req.t_first = time.perf_counter()
        p = req.params
        text, ids = "", []
        for t in new:
            req.n_generated += 1
            if t in self.eos_token_ids and not p.ignore_eos:
                req.finish_reason = "stop"
                break
            req.out_ids.append(t)
            ids.append(t)
            text += req.stops.push(req.detok.push([t]))
            if req.stops.matched:
                req.finish_reason = "stop"
                break
            if len(req.out_ids) >= p.max_tokens or len(req.prompt_ids) + len(req.out_ids) >= self.max_seq_len:
                req.finish_reason = "length"
                break
        if req.finish_reason is not None:
            if not req.stops.matched:
                text += req.stops.push(req.detok.flush())
                text += req.stops.flush() if not req.stops.matched else ""
            req.t_end = time.perf_counter()
            events.append((req, StreamEvent(text, ids, req.finish_reason, self.stats(req))))
        elif text or ids:
            events.append((req, StreamEvent(text, ids)))
