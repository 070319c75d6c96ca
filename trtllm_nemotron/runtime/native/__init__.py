"""The "native" step backend: the decode / verify / MTP steps as one C++ call each (the CPU accelerator).

Why: at small sizes a decode step built from framework ops -- even captured by `torch.compile` -- costs its
per-op dispatch and thread synchronisation, not its maths (the embedded model's step is ~4 M multiply-adds; a
compiled step spent ~94 % of its time outside matrix multiplies). `step.cpp` runs a whole step (embedding,
every layer, final norm, LM head; for MTP the whole greedy iteration: verify, accept, commit, draft) in one
call with no dispatch, fp32, split over the step's own worker threads by output rows / experts / heads when the
work is large enough (workers spin only while a step runs, then sleep: step.cpp "thread team").

The library is compiled on first use with the host C++ compiler (`g++ -O3 -march=native -fopenmp-simd
-pthread`, ~4 s) into `<cache>/native/<hash>/` (`fileio.cache_dir()`: `$TRTLLM_NEMOTRON_CACHE_DIR`, default
`~/.cache/trtllm-nemotron`), keyed by the source, the flags, the compiler and the CPU, written to a temp dir
and renamed (`fileio.atomic_dir`) so concurrent builders never see half a file.
No compiler -> `NativeUnavailable` with the reason; `backend="auto"` then takes the eager (torch) backend.

`NativeBackend(model, pool)` binds the model's weights and the slot pool's caches once (pointers into
torch-owned tensors, kept alive here) and implements `StepBackend` (runtime/backend.py); `decode_greedy` and
`spec_greedy` are one call each (they read and advance the cache lengths inside). Supported: CPU, float32
weights and caches (the engine's CPU default), the plugin kernels not forced; anything else is refused by
`unsupported_reason`.

ABI: each layer is described by one `ctypes.Structure` per layer kind (`MambaDesc`, `AttnDesc`, `MoeDesc`,
`MlpDesc`), mirrored field for field by the C structs of the same names in step.cpp and passed to
`nt_add_mamba` / `nt_add_attn` / `nt_add_moe` / `nt_add_mlp`. `route` runs the step's router on its own.

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
from trtllm_nemotron.runtime.backend import StepBackendBase, register

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("step.cpp")
FLAGS = [
    "-O3",
    "-march=native",
    "-fopenmp-simd",
    "-pthread",
    "-shared",
    "-fPIC",
    "-std=c++17",
    "-fno-math-errno",
]
PAR_MIN = 1 << 17  # multiply-adds from which one matvec / expert batch is split over threads
# float32 weight bytes from which weights that are exactly bfloat16 are streamed as bfloat16: a model this big
# does not stay in the CPU caches, so its decode step is bound by memory bandwidth and half the bytes is ~1.3x
# the speed (the 192M benchmark model); below it the weights stay cache-resident and the widening only costs.
BF16_MIN_BYTES = 64 << 20


def _struct(name: str, ints: str, *, floats: str = "", ptrs: str, state: str = "") -> type[ctypes.Structure]:
    """A layer description: norm_w, eps, then int64 sizes, float64 scalars, weight and state pointers (the
    field order of the C struct of the same name in step.cpp)."""
    f = [("norm_w", ctypes.c_void_p), ("eps", ctypes.c_double)]
    f += [(n, ctypes.c_int64) for n in ints.split()]
    f += [(n, ctypes.c_double) for n in floats.split()]
    f += [(n, ctypes.c_void_p) for n in ptrs.split() + state.split()]
    return type(name, (ctypes.Structure,), {"_fields_": f})


MambaDesc = _struct(
    "MambaDesc",
    "H P G N K d_inner conv_dim group has_dt_min",
    floats="dt_min",
    ptrs="in_proj in_bias conv_w conv_b A_log D dt_bias norm out_proj out_bias",
    state="conv_state ssm_state",
)
AttnDesc = _struct(
    "AttnDesc",
    "nh nkv hd cap",
    ptrs="q_proj q_proj_b k_proj k_proj_b v_proj v_proj_b o_proj o_proj_b",
    state="kc vc",
)
MoeDesc = _struct(
    "MoeDesc",
    "E F X top_k n_group topk_group norm_topk_prob shared_F",
    floats="scale",
    ptrs="gate bias up down fc1 fc2 sh_up sh_down",
)
MlpDesc = _struct("MlpDesc", "F", ptrs="up up_b down down_b")
_ADD = {
    "M": ("nt_add_mamba", MambaDesc),
    "*": ("nt_add_attn", AttnDesc),
    "E": ("nt_add_moe", MoeDesc),
    "-": ("nt_add_mlp", MlpDesc),
}

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
            for fn, desc in _ADD.values():
                getattr(lib, fn).restype = i32
                getattr(lib, fn).argtypes = [vp, i32, ctypes.POINTER(desc)]
            lib.nt_route.restype = i32
            lib.nt_route.argtypes = [ctypes.POINTER(MoeDesc), vp, i32, vp, vp]
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


_ERRORS = {
    1: "a cache row outside the slot pool",
    2: "a position past the cache's capacity (or an accepted count outside the recorded step)",
    3: "a token id outside the vocabulary",
    4: "a call this engine does not support (no MTP block, commit without a matching recorded step, or a "
    "routing configuration past the step's limits)",
}


def _ok(rc: int, what: str) -> None:
    """Raise RuntimeStateError for a refused call (the C++ step checks rows, positions and ids before writing
    into the caches)."""
    if rc:
        raise RuntimeStateError(f"native {what} refused: {_ERRORS.get(rc, f'error {rc}')}")


def route(logits, bias, *, top_k, n_group, topk_group, norm_topk_prob, routed_scaling_factor):
    """step.cpp's router alone: logits [n, E] -> (weights [n, top_k] fp32, idx [n, top_k] int64)."""
    logits = logits.float().contiguous()
    bias = bias.float().contiguous()
    n, E = logits.shape
    d = MoeDesc(
        E=E,
        top_k=top_k,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=int(norm_topk_prob),
        scale=routed_scaling_factor,
        bias=bias.data_ptr(),
    )
    idx = torch.empty(n, top_k, dtype=torch.int64)
    w = torch.empty(n, top_k)
    _ok(library().nt_route(ctypes.byref(d), logits.data_ptr(), n, idx.data_ptr(), w.data_ptr()), "route")
    return w, idx


class NativeBackend(StepBackendBase):
    """The model's weights and the pool's caches bound to the C++ step (see the module docstring)."""

    name = "native"

    def __init__(
        self, model, pool, *, threads: int | None = None, par_min: int = PAR_MIN, bf16: bool | None = None
    ) -> None:
        super().__init__(model, pool)
        self.lib = library()
        self.threads = threads or torch.get_num_threads()
        self.par_min = par_min
        self._keep: list[torch.Tensor] = []  # tensors whose memory the C++ side points into
        cfg = model.config
        self.hidden, self.vocab = cfg.hidden_size, cfg.vocab_size
        self.cache, self.mtp_cache = pool.cache, pool.mtp_cache
        if bf16 is None:  # see BF16_MIN_BYTES
            bf16 = 4 * cfg.parameter_counts()["total"] >= BF16_MIN_BYTES
        emb = model.backbone.embeddings.weight
        lm_head = emb if model.lm_head is None else model.lm_head.weight
        eps = cfg.layer_norm_epsilon
        self.handle = self.lib.nt_new(
            self.hidden,
            self.vocab,
            eps,
            self._p(emb),
            self._p(model.backbone.norm_f.weight),
            self._p(lm_head),
            int(bf16),
        )
        if not self.handle:
            raise NativeUnavailable("nt_new failed")
        for i, block in enumerate(model.backbone.layers):
            self._add(0, i, block, self.cache)
        self.has_mtp = self.mtp_cache is not None and model.mtp is not None
        if self.has_mtp:
            mtp = model.mtp.layers
            first, last = mtp[0], mtp[len(cfg.mtp_pattern) - 1]
            self.lib.nt_set_mtp(
                self.handle,
                eps,
                self._p(first.enorm.weight),
                self._p(first.hnorm.weight),
                self._p(first.eh_proj.weight),
                self._p(last.final_layernorm.weight),
            )
            for i, block in enumerate(mtp):
                self._add(1, i, block, self.mtp_cache)
        mc = self.mtp_cache if self.has_mtp else None
        self.lib.nt_set_caches(
            self.handle,
            self.cache.batch_size,
            self.cache.max_seq_len,
            mc.batch_size if mc is not None else 0,
            mc.max_seq_len if mc is not None else 0,
        )
        self.weight_bytes = int(self.lib.nt_weight_bytes(self.handle))
        self._verify_start: torch.Tensor | None = None

    @classmethod
    def unsupported_reason(cls, model, pool) -> str | None:
        """None when the native step can run this model and pool, else why not."""
        w = model.backbone.embeddings.weight
        if w.device.type != "cpu":
            return f"the model is on {w.device}; the native step is CPU only"
        bad = {p.dtype for p in model.parameters() if p.dtype != torch.float32}
        if bad:
            return f"the native step needs float32 weights; this model has {sorted(map(str, bad))}"
        caches = [pool.cache] + ([pool.mtp_cache] if pool.mtp_cache is not None else [])
        for t in (t for c in caches for t in c.tensors()):
            if t.is_floating_point() and t.dtype != torch.float32:
                return f"the native step keeps its caches in float32 (ssm_dtype float32); found {t.dtype}"
        if any(e.up_proj.bias is not None for m in _moe_mixers(model) for e in m.experts):
            return "expert biases (mlp_bias=True) are not supported by the native step"
        from plugins import _dispatch

        if _dispatch.backend_for("mamba_state_update", "cpu") != "reference":
            return "TRTLLM_NEMOTRON_KERNELS forces the plugin kernels, which the native step does not call"
        try:
            library()
        except (NativeUnavailable, OSError) as e:
            return str(e)
        return None

    def __del__(self) -> None:
        h, self.handle = getattr(self, "handle", None), None
        if h:
            self.lib.nt_free(h)

    def _p(self, t: torch.Tensor | None, *, keep: bool = True) -> int | None:
        """Pointer to a float32 contiguous CPU tensor (a converted copy is kept alive when needed)."""
        if t is None:
            return None
        t = t.detach()
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            t = t.to("cpu", torch.float32).contiguous()
        if keep:
            self._keep.append(t)
        return t.data_ptr()

    @staticmethod
    def _state(t: torch.Tensor) -> int:
        """Pointer to a cache tensor the C++ side writes into (must be used in place)."""
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            raise NativeUnavailable(f"cache tensor must be float32, contiguous, on CPU; got {t.dtype}")
        return t.data_ptr()

    def _add(self, stack: int, i: int, block, cache) -> None:
        """Describe layer i of `block`'s stack (0: backbone, 1: MTP block) to the C++ step."""
        m, p = block.mixer, self._p
        fn, Desc = _ADD[block.char]
        d = Desc(norm_w=p(block.norm.weight), eps=block.norm.eps)
        if block.char == "M":
            for n in ("H", "P", "G", "N", "K", "d_inner", "conv_dim"):
                setattr(d, n, getattr(m, n))
            d.group, d.has_dt_min = m.norm.group_size, int(m.clamp_dt_min is True)
            d.dt_min = float(m.time_step_min) if m.clamp_dt_min is True else 0.0
            d.in_proj, d.in_bias = p(m.in_proj.weight), p(m.in_proj.bias)
            d.conv_w, d.conv_b = p(m.conv1d.weight.reshape(m.conv_dim, m.K)), p(m.conv1d.bias)
            d.A_log, d.D, d.dt_bias, d.norm = p(m.A_log), p(m.D), p(m.dt_bias), p(m.norm.weight)
            d.out_proj, d.out_bias = p(m.out_proj.weight), p(m.out_proj.bias)
            d.conv_state, d.ssm_state = self._state(cache.conv[i]), self._state(cache.ssm[i])
        elif block.char == "*":
            kc, vc = cache.kv[i]
            d.nh, d.nkv, d.hd, d.cap = m.nh, m.nkv, m.hd, kc.shape[2]
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(d, n, p(getattr(m, n).weight))
                setattr(d, n + "_b", p(getattr(m, n).bias))
            d.kc, d.vc = self._state(kc), self._state(vc)
        elif block.char == "E":
            g, sh = m.gate, m.shared_experts
            up = torch.stack([e.up_proj.weight.detach() for e in m.experts])  # [E, F, X]; packed by the step
            down = torch.stack([e.down_proj.weight.detach() for e in m.experts])  # [E, X, F]
            d.E, d.F, d.X = up.shape
            d.top_k, d.n_group, d.topk_group = g.top_k, g.n_group, g.topk_group
            d.norm_topk_prob, d.scale = int(g.norm_topk_prob), float(g.routed_scaling_factor)
            d.shared_F = sh.up_proj.weight.shape[0] if sh is not None else 0
            d.gate, d.bias = p(g.weight), p(g.e_score_correction_bias)
            d.up, d.down = p(up, keep=False), p(down, keep=False)
            d.fc1 = p(m.fc1_latent_proj.weight) if m.latent else None
            d.fc2 = p(m.fc2_latent_proj.weight) if m.latent else None
            d.sh_up = p(sh.up_proj.weight) if sh is not None else None
            d.sh_down = p(sh.down_proj.weight) if sh is not None else None
        else:
            d.F = m.up_proj.weight.shape[0]
            d.up, d.up_b = p(m.up_proj.weight), p(m.up_proj.bias)
            d.down, d.down_b = p(m.down_proj.weight), p(m.down_proj.bias)
        if getattr(self.lib, fn)(self.handle, stack, ctypes.byref(d)) != 0:
            raise NativeUnavailable(f"layer {block.char}{i} is outside what the native step supports")

    # ------------------------------------------------------------------ the calls
    def _threads(self) -> None:
        self.lib.nt_set_threads(self.threads, self.par_min)

    @staticmethod
    def _lengths(cache) -> int:
        ln = cache.lengths
        if ln.dtype != torch.int64 or not ln.is_contiguous() or ln.device.type != "cpu":
            raise NativeUnavailable("cache lengths must be a contiguous int64 CPU tensor")
        return ln.data_ptr()

    def forward(self, ids, rows, start, *, record: bool, logits: bool, what: str = "forward step"):
        """nt_forward at explicit positions (lengths untouched): ids [batch, T] int64 at start[b].. of rows ->
        (final-normed hidden [batch, T, hidden], logits [batch, T, vocab] or None). record: the Mamba state
        after every token stays inside the library for `commit`, the pool's state is not written."""
        ids, rows, start = (t.to(torch.int64).contiguous() for t in (ids, rows, start))
        return self._call(self.lib.nt_forward, [ids, rows, start], [int(record)], ids.shape, logits, what)

    def _call(self, fn, ins: list[torch.Tensor], flags: list[int], shape, logits: bool, what: str):
        """fn(handle, *ins, batch, T, *flags, out [batch, T, hidden], logits or null, argmax null) ->
        (out, logits or None): nt_forward and nt_mtp."""
        batch, T = shape
        out = torch.empty(batch, T, self.hidden)
        lg = torch.empty(batch, T, self.vocab) if logits else None
        self._threads()
        _ok(
            fn(
                self.handle,
                *(t.data_ptr() for t in ins),
                batch,
                T,
                *flags,
                out.data_ptr(),
                None if lg is None else lg.data_ptr(),
                None,
            ),
            what,
        )
        return out, lg

    def _at_lengths(self, tokens: list[list[int]], rows: list[int], *, record: bool, logits: bool, what: str):
        r = torch.tensor(rows)
        start = self.cache.lengths[r].clone()
        h, lg = self.forward(torch.tensor(tokens), r, start, record=record, logits=logits, what=what)
        return r, start, h, lg

    def prefill(self, tokens: list[int], row: int) -> torch.Tensor:
        """A chunk that does not fit the cache is refused by the step's own checks (RuntimeStateError)."""
        r, start, h, _ = self._at_lengths([tokens], [row], record=False, logits=False, what="prefill")
        self.cache.lengths[r] = start + len(tokens)
        return h

    def decode(self, tokens: list[int], rows: list[int]) -> torch.Tensor:
        r, start, _, lg = self._at_lengths(
            [[t] for t in tokens], rows, record=False, logits=True, what="decode"
        )
        self.cache.lengths[r] = start + 1
        return lg[:, 0]

    def decode_greedy(self, tokens: list[int], rows: list[int]) -> list[int]:
        """One C++ call: reads and advances the cache lengths, argmax inside (no logits copied out). Arguments
        travel as ctypes arrays (no tensors: this is the per-token hot path)."""
        n = len(rows)
        arr = ctypes.c_int64 * n
        out = arr()
        self._threads()
        _ok(
            self.lib.nt_decode_greedy(
                self.handle, arr(*tokens), arr(*rows), self._lengths(self.cache), n, None, out
            ),
            "decode step",
        )
        return list(out)

    def verify(self, tokens: list[list[int]], rows: list[int]):
        _, start, h, lg = self._at_lengths(tokens, rows, record=True, logits=True, what="verify")
        self._verify_start = start
        return h, lg

    def commit(self, rows: list[int], keep: list[int]) -> None:
        r, k = torch.tensor(rows), torch.tensor(keep)
        self.commit_at(r, k - 1)
        start, self._verify_start = self._verify_start, None
        if start is None or start.shape != r.shape:
            raise RuntimeStateError(f"commit for rows {rows} does not follow a verify of those rows")
        self.cache.lengths[r] = start + k

    def commit_at(self, rows: torch.Tensor, accept: torch.Tensor) -> None:
        """Write the recorded Mamba state after token accept[b] (0-based) into rows (lengths untouched)."""
        rows, accept = rows.to(torch.int64).contiguous(), accept.to(torch.int64).contiguous()
        _ok(self.lib.nt_commit(self.handle, rows.data_ptr(), accept.data_ptr(), rows.shape[0]), "commit")

    def mtp(self, hidden, next_ids, rows, *, logits=True):
        r = torch.tensor(rows)
        start = self.mtp_cache.lengths[r].clone()
        out = self.mtp_at(hidden, next_ids, r, start, logits=logits)
        self.mtp_cache.lengths[r] = start + next_ids.shape[1]
        return out

    def mtp_at(self, hidden, next_ids, rows, start, *, logits: bool = True, what: str = "MTP step"):
        """nt_mtp at explicit MTP positions (lengths untouched) -> (g [batch, T, hidden], logits or None)."""
        ins = [hidden.float().contiguous()] + [
            t.to(torch.int64).contiguous() for t in (next_ids, rows, start)
        ]
        return self._call(self.lib.nt_mtp, ins, [], next_ids.shape, logits, what)

    def spec_greedy(self, tokens: list[list[int]], rows: list[int]):
        """One C++ call from the committed lengths; both caches' lengths advance past the last accepted token."""
        y, j, drafts = self.spec_at(torch.tensor(tokens), torch.tensor(rows), None)
        return y.tolist(), j.tolist(), drafts.tolist()

    def spec_at(self, ids: torch.Tensor, rows: torch.Tensor, start: torch.Tensor | None):
        """nt_spec_greedy: from explicit positions `start` (lengths untouched) or, with None, from the committed
        lengths (advanced). -> (targets [batch, K+1], accepted [batch], drafts [batch, K]) int64 tensors."""
        ids, rows = ids.to(torch.int64).contiguous(), rows.to(torch.int64).contiguous()
        batch, T = ids.shape
        K = T - 1
        if K < 1 or not self.has_mtp:
            raise NativeUnavailable("a greedy MTP iteration needs MTP layers and at least one draft token")
        y = torch.empty(batch, T, dtype=torch.int64)
        j = torch.empty(batch, dtype=torch.int64)
        drafts = torch.empty(batch, K, dtype=torch.int64)
        committed = start is None
        lengths = (self._lengths(self.cache), self._lengths(self.mtp_cache)) if committed else (None, None)
        if start is not None:
            start = start.to(torch.int64).contiguous()
        self._threads()
        _ok(
            self.lib.nt_spec_greedy(
                self.handle,
                ids.data_ptr(),
                rows.data_ptr(),
                None if start is None else start.data_ptr(),
                batch,
                K,
                y.data_ptr(),
                j.data_ptr(),
                drafts.data_ptr(),
                *lengths,
            ),
            "MTP iteration",
        )
        return y, j, drafts


register(NativeBackend, auto=True)


def _moe_mixers(model) -> list:
    mods = list(model.backbone.layers) + (list(model.mtp.layers) if model.mtp is not None else [])
    return [b.mixer for b in mods if b.char == "E"]
