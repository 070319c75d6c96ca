"""`Engine`: load an engine dir or a checkpoint, then generate: prefill, decode, sampling, MTP speculation.

Flow of one request (a `_Seq`), driven by `Engine.iterate` (one scheduler iteration; `generate` and the
continuous-batching `Scheduler` both call it):
1. prefill: the prompt runs through the reference network (`model.hidden_states` with the slot's cache
   row; chunked SSD scan; the native backend runs its own step over the chunk) in chunks of
   `prefill_chunk` tokens, one chunk per iteration, so a long prompt never stalls the decoding requests. The last chunk's logits give the first token. With MTP, every chunk
   also runs the MTP block over its (h_t, x_{t+1}) pairs, and the last position drafts `max_draft_len`
   tokens by applying the MTP block recursively (spec §4.7, TRT-LLM MTP_EAGLE_ONE_MODEL).
2. decode: all decoding requests run together in one batched `step.forward_step`:
   - without MTP: T = 1 token per row (the last sampled one); the Mamba state is updated in place;
   - with MTP: T = 1 + K tokens per row ([last token, d_1..d_K]); the step records the Mamba state after
     every position; the target tokens are sampled at every position and the longest prefix with
     d_i == target_{i-1} is accepted plus one target token (spec §6.2, greedy strict acceptance; with
     sampling, target tokens are drawn from the target distribution, so the output distribution is the
     target's). Attention rolls back by setting the length; the Mamba state of the last accepted position
     is committed from the record. The MTP block then runs over the K+1 new (h, token) pairs and the entry
     of the last accepted position drafts the next K tokens.
3. every new token goes through EOS / stop-string / max_tokens checks and the UTF-8-safe detokenizer.

Acceptance accounting follows trtllm-bench (spec §6.3): with `iters` verification forwards after prefill,
acceptance_length = tokens / (iters + 1), draft_tokens = K·(iters + 1), accepted = tokens − iters − 1,
acceptance_rate = accepted / draft_tokens (tokens counts an EOS token too).

Decode-step backends (`backend=`): "native" -- the C++ CPU step (`runtime/native`: a whole decode step, and
for greedy MTP the whole iteration, in one call; the greedy paths also read and advance the cache lengths
inside that call); "inductor" -- `torch.compile` of `step.forward_step` / `step.spec_step_greedy` (inductor
with its C++ wrapper, static shapes; each shape compiles lazily and inductor caches it on disk; batches are
padded to a power of two with the pool's scratch row); "eager" -- the same torch functions uncompiled.
"auto" (the default) takes native wherever it can run (CPU, float32 weights and caches, a C++ compiler, the
plugin kernels not forced), else inductor when compile=True, else eager. Prefill always runs the reference
network (chunked SSD scan) except on the native backend, whose step runs prompt chunks too. Tests run
native and eager; one test checks inductor == eager.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from trtllm_nemotron.errors import CheckpointError, RuntimeStateError
from trtllm_nemotron.runtime import step as S
from trtllm_nemotron.runtime.sampling import SamplingParams, sample_tokens
from trtllm_nemotron.runtime.slots import SlotPool
from trtllm_nemotron.runtime.tokenizer import IncrementalDetokenizer, StopStringFilter, Tokenizer

if TYPE_CHECKING:
    from trtllm_nemotron.model.cache import HybridCache
    from trtllm_nemotron.runtime.native import NativeStep

log = logging.getLogger(__name__)

CTX_BUCKET = 128
SMALL_STEP_WORK = 2**25  # tokens x active parameters below which a CPU step runs on one thread
KERNEL_CHOICES = (None, "auto", "torch", "triton")
BACKENDS = ("auto", "native", "inductor", "eager")


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
class _Seq:
    """One request inside the engine."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    detok: IncrementalDetokenizer
    stops: StopStringFilter
    t_submit: float = field(default_factory=time.perf_counter)
    slot: int = -1
    prefilled: int = 0  # prompt tokens already in the cache
    pending: int | None = None  # last sampled token, not yet in the cache
    drafts: list[int] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    n_generated: int = 0  # tokens produced, EOS included
    iters: int = 0  # decode forwards after the prefill
    t_first: float | None = None
    t_end: float | None = None
    finish_reason: str | None = None
    cancel_requested: bool = False

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < len(self.prompt_ids)

    @property
    def next_input(self) -> int:
        """The sampled token the next forward feeds (`pending`, set once the prefill sampled one)."""
        assert self.pending is not None, "decoding a sequence whose prefill has not sampled a token"
        return self.pending


class Engine:
    """A loaded model, its slot pool, tokenizer and generation loop (see the module docstring)."""

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
        compile: bool = False,
        eos_token_ids: list[int] | None = None,
        source: str = "",
        backend: str = "auto",
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
        if mtp < 0 or mtp > 16:
            raise RuntimeStateError(f"mtp (max_draft_len) must be in 0..16, got {mtp}")
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
        if backend not in BACKENDS:
            raise RuntimeStateError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self.mtp = mtp
        self.prefill_chunk = prefill_chunk
        self.device = model.backbone.embeddings.weight.device
        self.pool = SlotPool(model, max_batch_size, max_seq_len, mtp=mtp, ssm_dtype=ssm_dtype, scratch=True)
        self.fw = S.FlatWeights(model)
        self.mw = S.FlatWeights(model, mtp=True) if mtp else None
        ids = set(cfg.eos_token_ids) if eos_token_ids is None else set(eos_token_ids)
        ids.update(tokenizer.eos_token_ids())
        self.eos_token_ids = sorted(ids)
        self.lock = threading.RLock()
        self._step_fn = S.forward_step
        self._mtp_fn = S.mtp_step
        self._spec_fn = S.spec_step_greedy
        self._commit_fn = S.commit_mamba
        self._compile = False
        self._native: NativeStep | None = None
        self._ids = itertools.count()
        self._active_params = cfg.parameter_counts()["active"]
        self.backend = self._select_backend(backend, compile, ssm_dtype)
        if self.backend == "native":
            self.enable_native()
        elif self.backend == "inductor":
            self.enable_compile()

    # ------------------------------------------------------------------ loading
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
        kernels: str | None = None,
        ssm_dtype: torch.dtype | str = "float32",
        prefill_chunk: int = 256,
        compile: bool = False,
        backend: str = "auto",
    ) -> Engine:
        """Load an engine dir (build.json + checkpoint/) or a plain HF checkpoint dir (BF16 / FP8 / NVFP4).

        dtype None: float32 on CPU, bfloat16 on CUDA. mtp None: the engine's MTP setting (build.json
        `mtp.max_draft_len`); for a plain checkpoint with MTP layers, 3 (the build default); 0 turns it off.
        kernels: None / "auto" / "torch" (the reference ops) / "triton" (CUDA only).
        backend: the decode step -- "native" (the C++ CPU step, runtime/native), "inductor" (torch.compile),
        "eager", or "auto" (native where it can run, else inductor with compile=True, else eager).
        """
        from trtllm_nemotron.model import load_model

        path = Path(path)
        if not path.exists():
            raise CheckpointError(
                f"model path {path} does not exist; pass an engine dir or a HF checkpoint dir"
            )
        if kernels not in KERNEL_CHOICES:
            raise RuntimeStateError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeStateError("device 'cuda' asked for, but no CUDA GPU is visible; use --device cpu")
        if kernels == "triton" and dev.type != "cuda":
            raise RuntimeStateError("kernels='triton' needs a CUDA device; use kernels='torch' on CPU")
        if isinstance(dtype, str):
            dtype = _DTYPES.get(dtype) or _bad_dtype(dtype)
        if isinstance(ssm_dtype, str):
            ssm_dtype = _DTYPES.get(ssm_dtype) or _bad_dtype(ssm_dtype)
        ckpt = path / "checkpoint" if (path / "build.json").is_file() else path
        engine_mtp = None
        if (path / "build.json").is_file():
            try:
                manifest = json.loads((path / "build.json").read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(
                    f"{path / 'build.json'} is not valid JSON ({e}); rebuild the engine"
                ) from e
            m = manifest.get("mtp")
            engine_mtp = int(m.get("max_draft_len") or 0) if isinstance(m, dict) else int(m or 0)
        t0 = time.perf_counter()
        model = load_model(ckpt, dtype=dtype, device=dev)
        cfg = model.config
        if mtp is None:
            mtp = engine_mtp if engine_mtp is not None else (3 if cfg.num_nextn_predict_layers else 0)
        tok = Tokenizer.from_dir(ckpt, vocab_size=cfg.vocab_size)  # its eos ids include generation_config's
        eng = cls(
            model,
            tok,
            max_batch_size=max_batch_size,
            max_seq_len=max_seq_len,
            mtp=mtp,
            ssm_dtype=ssm_dtype,
            prefill_chunk=prefill_chunk,
            compile=compile,
            eos_token_ids=list(cfg.eos_token_ids),
            source=str(path),
            backend=backend,
        )
        log.info(
            "loaded %s in %.2fs (%s, %s, %s step, mtp=%d, %d slots x %d tokens, cache %.1f MiB)",
            path,
            time.perf_counter() - t0,
            dev,
            model.backbone.embeddings.weight.dtype,
            eng.backend,
            mtp,
            max_batch_size,
            eng.max_seq_len,
            eng.pool.memory_report()["total"] / 2**20,
        )
        return eng

    def _select_backend(self, backend: str, compile: bool, ssm_dtype: torch.dtype) -> str:
        """auto: the native CPU step when it can run this model (CPU, float32, a C++ compiler, the plugin
        kernels not forced), else inductor with compile=True, else eager. native: that or a clear error."""
        if backend in ("eager", "inductor"):
            return backend
        from trtllm_nemotron.runtime import native

        why = native.unsupported_reason(self.model, self.pool.cache, ssm_dtype)
        if why is None and self.device.type == "cpu":
            from plugins import _dispatch

            if _dispatch.backend_for("mamba_state_update", "cpu") != "reference":
                why = "TRTLLM_NEMOTRON_KERNELS forces the plugin kernels, which the native step does not call"
        if why is None:
            try:
                native.library()
            except (native.NativeUnavailable, OSError) as e:
                why = str(e)
        if why is None:
            return "native"
        if backend == "native":
            raise RuntimeStateError(f"backend='native' cannot run here: {why}")
        log.info("native CPU step not used (%s)", why)
        return "inductor" if compile else "eager"

    def enable_native(self) -> None:
        """Run the decode / verify / MTP steps in the native CPU step (runtime/native: one C++ call per step)."""
        from trtllm_nemotron.runtime.native import NativeStep

        self._native = NativeStep(self.fw, self.mw, self.pool.cache, self.pool.mtp_cache)
        n = self._native
        self._step_fn, self._mtp_fn, self._spec_fn = n.forward_step, n.mtp_step, n.spec_step_greedy
        self._commit_fn = n.commit_mamba
        self.backend = "native"

    def enable_compile(self) -> None:
        """Capture the decode/verify step and the MTP step with torch.compile (inductor, C++ wrapper, static
        shapes). Each (padded batch, tokens) shape compiles once, on first use; inductor's on-disk cache makes
        later processes fast. Batches are padded to a power of two with the pool's scratch row and attention
        always spans the whole row, so a few shapes cover every batch. Small steps (see `_threads_for`) get
        graphs compiled for one thread."""
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        cpu = self.device.type == "cpu"
        fns = {}
        for one in (False, True):
            opts = {"cpp_wrapper": cpu, **({"cpp.threads": 1} if one and cpu else {})}
            fns[one] = tuple(
                torch.compile(f, dynamic=False, options=opts)
                for f in (S.forward_step, S.mtp_step, S.spec_step_greedy)
            )
        self._compiled = fns
        self._compile = True
        self._native = None
        self._commit_fn = S.commit_mamba
        self.backend = "inductor"

    def _threads_for(self, n_tokens: int) -> bool:
        """True: run this step on one thread. On CPU a step whose work (tokens x active parameters) is small
        is dominated by per-kernel thread synchronisation, so one thread is faster than two (measured on
        2-core hosts: the 5.5M embedded model decodes several times faster at batch 1 on one thread)."""
        return self.device.type == "cpu" and n_tokens * self._active_params < SMALL_STEP_WORK

    @contextlib.contextmanager
    def _step_threads(self, n_tokens: int):
        """Select the step functions (compiled per thread count) and the intra-op threads for a step."""
        if self._native is not None:  # the native step picks its own threads
            yield
            return
        one = self._threads_for(n_tokens)
        if self._compile:
            self._step_fn, self._mtp_fn, self._spec_fn = self._compiled[one]
        if not one:
            yield
            return
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def _pad(self, n: int) -> int:
        """Rows the step runs for n active rows: n in eager mode, the next power of two when compiled."""
        return (
            n
            if not self._compile
            else min(1 << (n - 1).bit_length(), 1 << (self.max_batch_size - 1).bit_length())
        )

    def _step(self, ids: list[list[int]], rows: list[int], start: torch.Tensor, record: bool):
        """forward_step over len(rows) rows (padded when compiled); outputs are cut back to len(rows) rows."""
        n, T = len(rows), len(ids[0])
        p = self._pad(n) - n
        scratch = self.pool.scratch_row
        r = torch.tensor(rows + [scratch] * p, device=self.device)
        x = torch.tensor(ids + [[0] * T] * p, device=self.device)
        st = torch.cat([start, start.new_zeros(p)]) if p else start
        n_ctx = self.pool.capacity if self._compile else self._ctx(int(start.max()) + T)
        c = self.pool.cache
        with self._step_threads(x.numel()):
            h, logits, rec = self._step_fn(self.fw, x, r, st, c.kv, c.conv, c.ssm, n_ctx, record)
        if p:
            h, logits = h[:n], logits[:n]
            rec = {i: (w[:n], s_[:n]) for i, (w, s_) in rec.items()}
        return h, logits, rec

    def _mtp(self, hidden: torch.Tensor, next_ids: torch.Tensor, rows: list[int], start: torch.Tensor):
        n, T = hidden.shape[0], hidden.shape[1]
        p = self._pad(n) - n
        r = torch.tensor(rows + [self.pool.scratch_row] * p, device=self.device)
        if p:
            hidden = torch.cat([hidden, hidden.new_zeros(p, *hidden.shape[1:])])
            next_ids = torch.cat([next_ids, next_ids.new_zeros(p, T)])
            start = torch.cat([start, start.new_zeros(p)])
        n_ctx = self.pool.capacity if self._compile else self._ctx(int(start.max()) + T)
        mw, mcache = self._mtp_state()
        with self._step_threads(next_ids.numel()):
            g, dl = self._mtp_fn(self.fw, mw, hidden, next_ids, r, start, mcache.kv, n_ctx)
        return g[:n], dl[:n]

    def _mtp_state(self) -> tuple[S.FlatWeights, HybridCache]:
        """The MTP block's weights and cache (the MTP paths run only on an engine loaded with mtp > 0)."""
        if self.mw is None or self.pool.mtp_cache is None:
            raise RuntimeStateError("this engine was loaded with mtp=0: it has no MTP block to run")
        return self.mw, self.pool.mtp_cache

    def memory_report(self) -> dict[str, int]:
        return self.pool.memory_report()

    # ------------------------------------------------------------------ requests
    def new_request(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> _Seq:
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
        return _Seq(
            request_id,
            ids,
            params,
            gen,
            IncrementalDetokenizer(self.tokenizer),
            StopStringFilter(params.stop),
        )

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None) -> Completion:
        """Blocking, single request."""
        params = params or SamplingParams()
        seq = self.new_request(prompt, params)
        pieces: list[str] = []
        with self.lock:
            self.admit(seq)
            try:
                while seq.finish_reason is None:
                    for _, ev in self.iterate([seq]):
                        pieces.append(ev.text)
            finally:
                self.release(seq)
        return Completion("".join(pieces), list(seq.out_ids), seq.finish_reason, self.stats(seq))

    def generate_batch(
        self, prompts: list[str | list[int]], params: SamplingParams | None = None
    ) -> list[Completion]:
        """Blocking, a static batch (len(prompts) <= max_batch_size): every prompt is prefilled first, then
        all decode together in one batched step per iteration until each finishes (what a benchmark of
        batch-N decode wants; the scheduler is the continuous-batching path)."""
        params = params or SamplingParams()
        if len(prompts) > self.max_batch_size:
            raise RuntimeStateError(f"{len(prompts)} prompts but max_batch_size is {self.max_batch_size}")
        seqs = [self.new_request(p, params) for p in prompts]
        pieces: dict[int, list[str]] = {id(s): [] for s in seqs}
        with self.lock:
            try:
                for s in seqs:
                    self.admit(s)
                while any(s.in_prefill for s in seqs):
                    for s, ev in self.iterate([s for s in seqs if s.in_prefill]):
                        pieces[id(s)].append(ev.text)
                now = time.perf_counter()
                for s in seqs:  # time the batch from the moment every request has its first token
                    assert s.t_first is not None  # the prefill emitted the first token
                    s.t_submit, s.t_first = s.t_submit + (now - s.t_first), now
                while any(s.finish_reason is None for s in seqs):
                    for s, ev in self.iterate([s for s in seqs if s.finish_reason is None]):
                        pieces[id(s)].append(ev.text)
            finally:
                for s in seqs:
                    self.release(s)
        return [
            Completion("".join(pieces[id(s)]), list(s.out_ids), cast(str, s.finish_reason), self.stats(s))
            for s in seqs
        ]

    def admit(self, seq: _Seq) -> None:
        seq.slot = self.pool.acquire()

    def release(self, seq: _Seq) -> None:
        if seq.slot >= 0:
            self.pool.release(seq.slot)
            seq.slot = -1

    # ------------------------------------------------------------------ one iteration
    @torch.inference_mode()
    def iterate(self, seqs: list[_Seq]) -> list[tuple[_Seq, StreamEvent]]:
        """One scheduler iteration over admitted, unfinished seqs: one prefill chunk (the oldest request still
        in prefill) and one batched decode step for every request that was already decoding. Returns the
        events produced, in order; a finished seq's last event has finish_reason and stats."""
        events: list[tuple[_Seq, StreamEvent]] = []
        decoding = [s for s in seqs if not s.in_prefill and s.finish_reason is None]
        pre = next((s for s in seqs if s.in_prefill and s.finish_reason is None), None)
        if pre is not None:
            self._prefill_chunk(pre, events)
        if decoding:
            if self.mtp:
                self._verify(decoding, events)
            else:
                self._decode(decoding, events)
        return events

    def _ctx(self, need: int) -> int:
        return min(self.pool.capacity, -(-need // CTX_BUCKET) * CTX_BUCKET)

    def _prefill_chunk(self, seq: _Seq, events) -> None:
        cache = self.pool.cache
        s, e = seq.prefilled, min(len(seq.prompt_ids), seq.prefilled + self.prefill_chunk)
        rows = torch.tensor([seq.slot], device=self.device)
        nat = self._native
        # the native step runs prompt chunks too (sequential Mamba recurrence, causal attention)
        if nat is not None:
            h = nat.prefill(seq.prompt_ids[s:e], seq.slot)
        else:
            ids = torch.tensor([seq.prompt_ids[s:e]], device=self.device)
            h = self.model.hidden_states(ids, cache, rows=rows)  # [1, T, hidden]
        seq.prefilled = e
        last = e == len(seq.prompt_ids)
        if not last:
            if self.mtp:
                if nat is not None:
                    nat.mtp_prefill(h, seq.prompt_ids[s + 1 : e + 1], seq.slot)
                else:
                    nxt = torch.tensor([seq.prompt_ids[s + 1 : e + 1]], device=self.device)
                    self.model.mtp_step(h, nxt, self.pool.mtp_cache, rows=rows)
            return
        logits = self.model.logits(h[:, -1])  # [1, vocab]
        tok = self._sample(seq, logits)[0]
        seq.pending = tok
        if self.mtp:
            if nat is not None:
                g = nat.mtp_prefill(h, seq.prompt_ids[s + 1 : e] + [tok], seq.slot)
                dl = self.model.logits(g[:, -1:])
            else:
                nxt = torch.tensor([seq.prompt_ids[s + 1 : e] + [tok]], device=self.device)
                dl, g = self.model.mtp_step(h, nxt, self.pool.mtp_cache, rows=rows)
            start = self._mtp_state()[1].lengths[rows].clone()
            seq.drafts = self._draft_rest([seq.slot], g[:, -1:], dl[:, -1], start)[0]
        self._emit(seq, [tok], events)

    def _decode(self, seqs: list[_Seq], events) -> None:
        cache = self.pool.cache
        slots = [s.slot for s in seqs]
        if self._native is not None and all(s.params.greedy for s in seqs):
            # the hot path: one C++ call (reads and advances the cache lengths, argmax inside)
            toks = self._native.decode_greedy([s.next_input for s in seqs], slots)
        else:
            rows = torch.tensor(slots, device=self.device)
            start = cache.lengths[rows]
            _, logits, _ = self._step([[s.next_input] for s in seqs], slots, start, False)
            toks = self._sample_batch(seqs, logits[:, 0])
            cache.lengths[rows] = start + 1
        for s, t in zip(seqs, toks, strict=True):
            s.iters += 1
            s.pending = t
            self._emit(s, [t], events)

    def _verify(self, seqs: list[_Seq], events) -> None:
        cache, mcache = self.pool.cache, self._mtp_state()[1]
        K = self.mtp
        slots = [s.slot for s in seqs]
        greedy_all = all(s.params.greedy for s in seqs)
        if greedy_all and self._native is not None:  # one C++ call, lengths read and advanced inside
            y, acc, drafts = self._native.spec_greedy_committed([[s.next_input] + s.drafts for s in seqs], slots)
            return self._emit_verified(seqs, y, acc, drafts, events)
        rows = torch.tensor(slots, device=self.device)
        start = cache.lengths[rows]
        if greedy_all:
            return self._verify_greedy(seqs, slots, rows, start, events)
        h, logits, rec = self._step(
            [[s.next_input] + s.drafts for s in seqs], slots, start, True
        )  # [batch, K+1]
        targets = []
        accept = []
        greedy = [s.params.greedy for s in seqs]
        argmax = logits.argmax(-1).tolist() if any(greedy) else None
        for b, s in enumerate(seqs):
            y = argmax[b] if argmax is not None and greedy[b] else self._sample(s, logits[b])
            j = 0
            while j < K and s.drafts[j] == y[j]:
                j += 1
            targets.append(y)
            accept.append(j)
        acc = torch.tensor(accept, device=self.device)
        self._commit_fn(rec, cache.conv, cache.ssm, rows, acc)
        cache.lengths[rows] = start + acc + 1
        # MTP over the K+1 new (h_t, x_{t+1}) pairs; entry j (the last accepted position) drafts next
        g, dl = self._mtp(h, torch.tensor(targets, device=self.device), slots, start)
        every = torch.arange(len(seqs), device=self.device)
        mcache.lengths[rows] = start + acc + 1
        drafts = self._draft_rest(slots, g[every, acc][:, None], dl[every, acc], start + acc + 1)
        self._emit_verified(seqs, targets, accept, drafts, events)

    def _verify_greedy(self, seqs: list[_Seq], slots: list[int], rows, start, events) -> None:
        """All rows greedy: the whole iteration is one `spec_step_greedy` call (one compiled graph)."""
        cache, (mw, mcache) = self.pool.cache, self._mtp_state()
        n = len(seqs)
        p = self._pad(n) - n
        r = torch.tensor(slots + [self.pool.scratch_row] * p, device=self.device)
        x = torch.tensor(
            [[s.next_input] + s.drafts for s in seqs] + [[0] * (self.mtp + 1)] * p, device=self.device
        )
        st = torch.cat([start, start.new_zeros(p)]) if p else start
        n_ctx = self.pool.capacity if self._compile else self._ctx(int(start.max()) + 2 * self.mtp + 1)
        with self._step_threads(x.numel()):
            y, j, drafts = self._spec_fn(
                self.fw, mw, x, r, st, cache.kv, cache.conv, cache.ssm, mcache.kv, n_ctx
            )
        j = j[:n]
        cache.lengths[rows] = start + j + 1
        mcache.lengths[rows] = start + j + 1
        self._emit_verified(seqs, y[:n].tolist(), j.tolist(), drafts[:n].tolist(), events)

    def _emit_verified(self, seqs: list[_Seq], y, acc, drafts, events) -> None:
        """After a verification: row i keeps targets y[i][: acc[i] + 1] and drafts[i] for the next iteration."""
        for i, s in enumerate(seqs):
            s.iters += 1
            new = y[i][: acc[i] + 1]
            s.pending = new[-1]
            s.drafts = drafts[i]
            self._emit(s, new, events)

    def _draft_rest(self, slots: list[int], g, first_logits, pos) -> list[list[int]]:
        """Greedy drafts: d_1 from first_logits [batch, vocab], then K-1 recursive MTP applications at MTP
        positions pos, pos+1, ... (provisional KV; the committed MTP length is left unchanged)."""
        d = first_logits.argmax(-1)  # [batch]
        out = [d]
        for i in range(self.mtp - 1):
            g, dl = self._mtp(g, d[:, None], slots, pos + i)
            d = dl[:, 0].argmax(-1)
            out.append(d)
        return torch.stack(out, dim=1).tolist()

    # ------------------------------------------------------------------ sampling and output
    def _sample(self, seq: _Seq, logits: torch.Tensor) -> list[int]:
        if seq.params.greedy:
            return logits.argmax(-1).tolist()
        return sample_tokens(logits.float().cpu(), seq.params, seq.generator)

    def _sample_batch(self, seqs: list[_Seq], logits: torch.Tensor) -> list[int]:
        """logits [batch, vocab] -> one token per seq."""
        if all(s.params.greedy for s in seqs):
            return logits.argmax(-1).tolist()
        return [self._sample(s, logits[b : b + 1])[0] for b, s in enumerate(seqs)]

    def _emit(self, seq: _Seq, new: list[int], events) -> None:
        if seq.t_first is None:
            seq.t_first = time.perf_counter()
        p = seq.params
        text, ids = "", []
        for t in new:
            seq.n_generated += 1
            if t in self.eos_token_ids and not p.ignore_eos:
                seq.finish_reason = "stop"
                break
            seq.out_ids.append(t)
            ids.append(t)
            text += seq.stops.push(seq.detok.push([t]))
            if seq.stops.matched:
                seq.finish_reason = "stop"
                break
            if len(seq.out_ids) >= p.max_tokens or len(seq.prompt_ids) + len(seq.out_ids) >= self.max_seq_len:
                seq.finish_reason = "length"
                break
        if seq.finish_reason is not None:
            if not seq.stops.matched:
                text += seq.stops.push(seq.detok.flush())
                text += seq.stops.flush() if not seq.stops.matched else ""
            seq.t_end = time.perf_counter()
            events.append((seq, StreamEvent(text, ids, seq.finish_reason, self.stats(seq))))
        elif text or ids:
            events.append((seq, StreamEvent(text, ids)))

    def finish(self, seq: _Seq, reason: str, error: str | None = None) -> StreamEvent:
        """End a seq from outside the loop (cancel / error)."""
        seq.finish_reason = reason
        seq.t_end = time.perf_counter()
        return StreamEvent("", [], reason, self.stats(seq), error)

    def stats(self, seq: _Seq) -> dict[str, Any]:
        end = seq.t_end or time.perf_counter()
        n = len(seq.out_ids)
        ttft = (seq.t_first - seq.t_submit) if seq.t_first is not None else None
        e2e = end - seq.t_submit
        decode_s = end - seq.t_first if seq.t_first is not None else 0.0
        st: dict[str, Any] = {
            "num_tokens": n,
            "prompt_tokens": len(seq.prompt_ids),
            "ttft_s": ttft,
            "e2e_s": e2e,
            # decode speed: tokens after the first over the time after the first (all of them if only one)
            "tokens_per_s": ((n - 1) / decode_s if n > 1 and decode_s > 0 else (n / e2e if e2e > 0 else 0.0)),
            "acceptance_rate": None,
            "acceptance_length": None,
            "accepted_draft_tokens": 0,
            "draft_tokens": 0,
            "decode_iterations": seq.iters,
            "backend": self.backend,
        }
        if self.mtp and seq.n_generated:
            fwd = seq.iters + 1
            drafted = self.mtp * fwd
            accepted = max(0, seq.n_generated - fwd)
            st.update(
                acceptance_length=seq.n_generated / fwd,
                draft_tokens=drafted,
                accepted_draft_tokens=accepted,
                acceptance_rate=accepted / drafted,
            )
        return st

    def scheduler(self, **kw: Any):
        from trtllm_nemotron.runtime.scheduler import Scheduler

        return Scheduler(self, **kw)


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}


def _bad_dtype(name: str):
    raise RuntimeStateError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
