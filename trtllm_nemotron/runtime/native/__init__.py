"""The native CPU step: the decode / verify / MTP steps of `runtime/step.py` as one C++ call each.

Why: at small sizes a decode step built from framework ops -- even captured by `torch.compile` -- costs its
per-op dispatch and thread synchronisation, not its maths (the embedded model's step is ~4 M multiply-adds; a
compiled step spent ~94 % of its time outside matrix multiplies). `step.cpp` runs a whole step (embedding,
every layer, final norm, LM head; for MTP the whole greedy iteration: verify, accept, commit, draft) in one
call with no dispatch, fp32, OpenMP over output rows / experts / heads when the work is large enough.

The library is compiled on first use with the host C++ compiler (`g++ -O3 -march=native -fopenmp`, ~4 s) into
`<cache>/native/<hash>/` (`fileio.cache_dir()`: `$TRTLLM_NEMOTRON_CACHE_DIR`, default `~/.cache/trtllm-nemotron`),
keyed by the source, the flags, the compiler and the CPU, written to a temp dir and renamed
(`fileio.atomic_dir`) so concurrent builders never see half a file.
No compiler -> `NativeUnavailable` with the reason; the engine then falls back to the torch step.

`NativeStep(fw, mw, cache, mtp_cache)` binds the weights (`step.FlatWeights`) and the slot pool's caches once
(pointers into torch-owned tensors, kept alive here) and exposes the same functions as `runtime/step.py`:
`forward_step`, `mtp_step`, `spec_step_greedy`, `commit_mamba`. Supported: CPU, float32 weights and caches
(the engine's CPU default); anything else is refused by `unsupported_reason`.

Every output element is computed by the same C++ code whatever the batch, the number of tokens per row or the
thread count, so a request decodes to the same bits alone or in a batch, with or without MTP.

Weights: the step keeps pointers to the float32 tensors, plus its own copies where a layout or format pays:
the MoE experts re-packed in blocks of 4 rows (one sequential stream per block), and, for models of at least
`BF16_MIN_BYTES` whose weights are exactly bfloat16 (a bf16 checkpoint upcast at load), bfloat16 copies that
are widened in registers -- the same floats, half the bytes streamed per step. `weight_bytes` reports what
one step reads at most.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import torch

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.native_build import NativeUnavailable, compile_library

__all__ = ["NativeStep", "NativeUnavailable", "build", "compile_library", "library", "unsupported_reason"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("step.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno"]
PAR_MIN = 1 << 17  # multiply-adds from which one matvec / expert batch is split over threads
# float32 weight bytes from which weights that are exactly bfloat16 are streamed as bfloat16: a model this big
# does not stay in the CPU caches, so its decode step is bound by memory bandwidth and half the bytes is ~1.3x
# the speed (the 192M benchmark model); below it the weights stay cache-resident and the widening only costs.
BF16_MIN_BYTES = 64 << 20

MAMBA, ATTN, MOE, MLP = 0, 1, 2, 3
_KIND = {"M": MAMBA, "*": ATTN, "E": MOE, "-": MLP}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def build(force: bool = False) -> Path:
    """Compile step.cpp (once per source/compiler/CPU) and return the shared library's path."""
    return compile_library(SOURCE, "libnemotron_step.so", "the native CPU step", flags=FLAGS, force=force)


def library() -> ctypes.CDLL:
    """The loaded library (built on first use)."""
    global _lib
    with _lock:
        if _lib is None:
            lib = ctypes.CDLL(str(build()))
            vp, i32, i64, f64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_double
            lib.nt_new.restype = vp
            lib.nt_new.argtypes = [i32, i32, f64, vp, vp, vp, i32]
            lib.nt_weight_bytes.restype = i64
            lib.nt_weight_bytes.argtypes = [vp]
            lib.nt_free.argtypes = [vp]
            lib.nt_set_threads.argtypes = [i32, i64]
            lib.nt_set_mtp.argtypes = [vp, f64, vp, vp, vp, vp]
            lib.nt_add_layer.restype = i32
            lib.nt_add_layer.argtypes = [vp, i32, i32, vp, vp, vp]
            lib.nt_forward.argtypes = [vp, vp, vp, vp, i32, i32, i32, vp, vp, vp]
            lib.nt_commit.argtypes = [vp, vp, vp, i32]
            lib.nt_mtp.argtypes = [vp, vp, vp, vp, vp, i32, i32, vp, vp, vp]
            lib.nt_spec_greedy.argtypes = [vp, vp, vp, vp, i32, i32, vp, vp, vp, vp, vp]
            lib.nt_decode_greedy.argtypes = [vp, vp, vp, vp, i32, vp, vp]
            for f in (lib.nt_forward, lib.nt_commit, lib.nt_mtp, lib.nt_spec_greedy, lib.nt_decode_greedy):
                f.restype = i32
            lib.nt_set_caches.argtypes = [vp, i64, i64, i64, i64]
            _lib = lib
        return _lib


def unsupported_reason(model, cache, ssm_dtype: torch.dtype) -> str | None:
    """None when the native step can run this model and cache, else why not."""
    w = model.backbone.embeddings.weight
    if w.device.type != "cpu":
        return f"the model is on {w.device}; the native step is CPU only"
    bad = {p.dtype for p in model.parameters() if p.dtype != torch.float32}
    if bad:
        return f"the native step needs float32 weights; this model has {sorted(map(str, bad))}"
    if ssm_dtype != torch.float32:
        return f"the native step keeps the Mamba state in float32; ssm_dtype is {ssm_dtype}"
    for t in cache.tensors():
        if t.is_floating_point() and t.dtype != torch.float32:
            return f"the native step needs float32 caches; found {t.dtype}"
    return None


_ERRORS = {
    1: "a cache row outside the slot pool",
    2: "a position past the cache's capacity (or an accepted count outside the recorded step)",
    3: "a token id outside the vocabulary",
    4: "a call this engine does not support (no MTP block, or commit without a matching recorded step)",
}


def _ok(rc: int, what: str) -> None:
    """Raise RuntimeStateError for a refused call (the C++ step checks rows, positions and ids before writing
    into the caches)."""
    if rc:
        raise RuntimeStateError(f"native {what} refused: {_ERRORS.get(rc, f'error {rc}')}")


class NativeStep:
    """The weights and caches of one engine bound to the C++ step (see the module docstring)."""

    def __init__(
        self,
        fw,
        mw,
        cache,
        mtp_cache,
        *,
        threads: int | None = None,
        par_min: int = PAR_MIN,
        bf16: bool | None = None,
    ):
        self.lib = library()
        self.threads = threads or torch.get_num_threads()
        self.par_min = par_min
        self._keep: list[torch.Tensor] = []  # tensors whose memory the C++ side points into
        cfg = fw.cfg
        self.hidden, self.vocab = cfg.hidden_size, cfg.vocab_size
        if bf16 is None:  # see BF16_MIN_BYTES
            bf16 = 4 * cfg.parameter_counts()["total"] >= BF16_MIN_BYTES
        self.handle = self.lib.nt_new(
            self.hidden,
            self.vocab,
            fw.eps,
            self._p(fw.embed),
            self._p(fw.norm_f),
            self._p(fw.lm_head),
            int(bf16),
        )
        if not self.handle:
            raise NativeUnavailable("nt_new failed")
        self.cache, self.mtp_cache = cache, mtp_cache
        for L in fw.layers:
            self._add(0, L, cache)
        if mw is not None:
            self.lib.nt_set_mtp(
                self.handle, mw.eps, self._p(mw.enorm), self._p(mw.hnorm), self._p(mw.eh_proj),
                self._p(mw.final_norm),
            )  # fmt: skip
            for L in mw.layers:
                self._add(1, L, mtp_cache)
        self.has_mtp = mw is not None
        self.lib.nt_set_caches(
            self.handle, cache.batch_size, cache.max_seq_len,
            mtp_cache.batch_size if mtp_cache is not None and mw is not None else 0,
            mtp_cache.max_seq_len if mtp_cache is not None and mw is not None else 0,
        )  # fmt: skip
        self.weight_bytes = int(self.lib.nt_weight_bytes(self.handle))

    def __del__(self) -> None:
        h, self.handle = getattr(self, "handle", None), None
        if h:
            self.lib.nt_free(h)

    def _p(self, t: torch.Tensor | None) -> int | None:
        """Pointer to a float32 contiguous CPU tensor (a converted copy is kept alive when needed)."""
        if t is None:
            return None
        t = t.detach()
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            t = t.to("cpu", torch.float32).contiguous()
        self._keep.append(t)
        return t.data_ptr()

    @staticmethod
    def _state(t: torch.Tensor) -> int:
        """Pointer to a cache tensor the C++ side writes into (must be used in place)."""
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            raise NativeUnavailable(f"cache tensor must be float32, contiguous, on CPU; got {t.dtype}")
        return t.data_ptr()

    def _add(self, stack: int, L, cache) -> None:
        m, w = L.meta, L.w
        kind = _KIND[L.char]
        fv = [L.eps]
        if kind == MAMBA:
            iv = [m["H"], m["P"], m["G"], m["N"], m["K"], m["d_inner"], m["conv_dim"], m["group"]]
            iv.append(int(m["dt_min"] is not None))
            fv.append(float(m["dt_min"] or 0.0))
            names: tuple[str, ...] = ("in_proj", "in_bias", "conv_w", "conv_b", "A_log", "D", "dt_bias", "norm", "out_proj",
                     "out_bias")  # fmt: skip
            ptrs = [self._p(L.norm_w), *(self._p(w[n]) for n in names)]
            ptrs += [self._state(cache.conv[L.cache_idx]), self._state(cache.ssm[L.cache_idx])]
        elif kind == ATTN:
            kc, vc = cache.kv[L.cache_idx]
            iv = [m["nh"], m["nkv"], m["hd"], kc.shape[2]]
            names = ("q_proj", "q_proj_b", "k_proj", "k_proj_b", "v_proj", "v_proj_b", "o_proj", "o_proj_b")
            ptrs = [self._p(L.norm_w), *(self._p(w[n]) for n in names), self._state(kc), self._state(vc)]
        elif kind == MOE:
            E, F, X = w["up"].shape
            sh = w["sh_up"].shape[0] if w["sh_up"] is not None else 0
            iv = [E, F, X, m["top_k"], m["n_group"], m["topk_group"], int(m["norm_topk_prob"]), sh]
            fv.append(float(m["scale"]))
            names = ("gate", "bias", "up", "down", "fc1", "fc2", "sh_up", "sh_down")
            ptrs = [self._p(L.norm_w), *(self._p(w[n]) for n in names)]
        else:
            iv = [w["up"].shape[0]]
            ptrs = [self._p(L.norm_w), *(self._p(w[n]) for n in ("up", "up_b", "down", "down_b"))]
        ia = (ctypes.c_int64 * len(iv))(*iv)
        fa = (ctypes.c_double * len(fv))(*fv)
        pa = (ctypes.c_void_p * len(ptrs))(*ptrs)
        rc = self.lib.nt_add_layer(self.handle, stack, kind, ia, fa, pa)
        if rc != 0:
            raise NativeUnavailable(
                f"layer {L.char}{L.cache_idx} is outside what the native step supports ({rc})"
            )

    # ------------------------------------------------------------------ the step.py API
    def _threads(self) -> None:
        self.lib.nt_set_threads(self.threads, self.par_min)

    @staticmethod
    def _i64(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.int64).contiguous()

    def forward_step(self, fw, ids, rows, start, cache_kv, cache_conv, cache_ssm, n_ctx, record):
        """= step.forward_step (the caches are the bound ones). With record=True the per-token Mamba states stay
        inside the library; `commit_mamba` writes the accepted ones."""
        return (*self._forward(self._i64(ids), self._i64(rows), self._i64(start), record, logits=True),
                {"native": rows} if record else {})  # fmt: skip

    def _forward(self, ids, rows, start, record: bool, *, logits: bool, what: str = "forward step"):
        """nt_forward -> (final-normed hidden [batch, T, hidden], logits [batch, T, vocab] or None)."""
        batch, T = ids.shape
        h = torch.empty(batch, T, self.hidden)
        lg = torch.empty(batch, T, self.vocab) if logits else None
        self._threads()
        _ok(self.lib.nt_forward(
            self.handle, ids.data_ptr(), rows.data_ptr(), start.data_ptr(), batch, T, int(record),
            h.data_ptr(), None if lg is None else lg.data_ptr(), None,
        ), what)  # fmt: skip
        return h, lg

    def decode_greedy(self, tokens: list[int], rows: list[int]) -> list[int]:
        """The engine's greedy decode step in one call: the last token of each row (at the cache's committed
        length), argmax only (no logits copied out); the cache lengths of `rows` advance by one. Arguments
        travel as ctypes arrays (no tensors: this is the per-token hot path)."""
        n = len(rows)
        arr = ctypes.c_int64 * n
        out = arr()
        self._threads()
        _ok(self.lib.nt_decode_greedy(
            self.handle, arr(*tokens), arr(*rows), self._lengths(self.cache), n, None, out
        ), "decode step")  # fmt: skip
        return list(out)

    @staticmethod
    def _lengths(cache) -> int:
        ln = cache.lengths
        if ln.dtype != torch.int64 or not ln.is_contiguous() or ln.device.type != "cpu":
            raise NativeUnavailable("cache lengths must be a contiguous int64 CPU tensor")
        return ln.data_ptr()

    def prefill(self, tokens: list[int], row: int) -> torch.Tensor:
        """One prompt chunk of one row, at the row's committed length: state written, length advanced by
        len(tokens). -> final-normed hidden [1, T, hidden] (no logits: the caller needs the last one only).
        A chunk that does not fit the cache is refused by the step's own checks (RuntimeStateError)."""
        ln = self.cache.lengths
        start = ln[row : row + 1].clone()
        h, _ = self._forward(
            torch.tensor([tokens]), torch.tensor([row]), start, False, logits=False, what="prefill"
        )
        ln[row] = start[0] + len(tokens)
        return h

    def mtp_prefill(self, hidden: torch.Tensor, next_tokens: list[int], row: int) -> torch.Tensor:
        """The MTP block over one row's prompt chunk (h_t, x_{t+1}) at the MTP cache's committed length;
        length advanced by T. -> final-normed g [1, T, hidden]."""
        ln = self.mtp_cache.lengths
        start = ln[row : row + 1].clone()
        g, _ = self._mtp(
            hidden, torch.tensor([next_tokens]), torch.tensor([row]), start, logits=False, what="MTP prefill"
        )
        ln[row] = start[0] + len(next_tokens)
        return g

    def commit_mamba(self, records, cache_conv, cache_ssm, rows, accept) -> None:
        rows, accept = self._i64(rows), self._i64(accept)
        _ok(self.lib.nt_commit(self.handle, rows.data_ptr(), accept.data_ptr(), rows.shape[0]), "commit")

    def mtp_step(self, fw, mw, hidden, next_ids, rows, start, cache_kv, n_ctx):
        """= step.mtp_step: (final-normed g [batch, T, hidden], draft logits [batch, T, vocab])."""
        return self._mtp(hidden, self._i64(next_ids), self._i64(rows), self._i64(start), logits=True)

    def _mtp(self, hidden, next_ids, rows, start, *, logits: bool, what: str = "MTP step"):
        hidden = hidden.float().contiguous()
        batch, T = next_ids.shape
        g = torch.empty(batch, T, self.hidden)
        lg = torch.empty(batch, T, self.vocab) if logits else None
        self._threads()
        _ok(self.lib.nt_mtp(
            self.handle, hidden.data_ptr(), next_ids.data_ptr(), rows.data_ptr(), start.data_ptr(), batch, T,
            g.data_ptr(), None if lg is None else lg.data_ptr(), None,
        ), what)  # fmt: skip
        return g, lg

    def spec_step_greedy(self, fw, mw, ids, rows, start, cache_kv, cache_conv, cache_ssm, mtp_kv, n_ctx):
        """= step.spec_step_greedy: (targets [batch, K+1], accepted [batch], next drafts [batch, K]); the cache
        lengths are the caller's to set."""
        return self._spec(self._i64(ids), self._i64(rows), self._i64(start), committed=False)

    def spec_greedy_committed(self, tokens: list[list[int]], rows: list[int]):
        """The engine's greedy MTP iteration in one call: rows start at the cache's committed length, and both
        caches' lengths advance past the last accepted token. tokens [batch][K+1] = [last, d_1..d_K] ->
        (targets [batch][K+1], accepted [batch], next drafts [batch][K]) as lists."""
        y, j, drafts = self._spec(
            torch.tensor(tokens, dtype=torch.int64),
            torch.tensor(rows, dtype=torch.int64),
            None,
            committed=True,
        )
        return y.tolist(), j.tolist(), drafts.tolist()

    def _spec(self, ids: torch.Tensor, rows: torch.Tensor, start: torch.Tensor | None, *, committed: bool):
        batch, T = ids.shape
        K = T - 1
        if K < 1 or not self.has_mtp:
            raise NativeUnavailable("a greedy MTP iteration needs MTP layers and at least one draft token")
        y = torch.empty(batch, T, dtype=torch.int64)
        j = torch.empty(batch, dtype=torch.int64)
        drafts = torch.empty(batch, K, dtype=torch.int64)
        lengths = (self._lengths(self.cache), self._lengths(self.mtp_cache)) if committed else (None, None)
        self._threads()
        _ok(self.lib.nt_spec_greedy(
            self.handle, ids.data_ptr(), rows.data_ptr(), None if start is None else start.data_ptr(), batch, K,
            y.data_ptr(), j.data_ptr(), drafts.data_ptr(), *lengths,
        ), "MTP iteration")  # fmt: skip
        return y, j, drafts
