"""Running the exported ONNX graphs (`<engine>/onnx/`, builder/onnx_export.py) on CPU: the `onnx` backend.

`OnnxNetwork(onnx_dir, pool=..., max_seq_len=...)` loads `model.onnx` (and `mtp.onnx`), allocates the state
pools the graphs take as inputs (`kv_cache_<i>`, `conv_state_<i>`, `ssm_state_<i>`, the MTP block's
`mtp_kv_cache_<j>`; shapes from io.json with `pool` and `max_seq_len` filled in) and runs them:

    logits, hidden = net.forward(ids [batch][T], past [batch], slots [batch])   # backbone, states updated
    logits, g      = net.mtp(hidden, next_ids, past, slots)                     # MTP block (depth 0)

Each state's `present_*` output replaces its input pool (what a TensorRT runtime gets by binding both to one
buffer). A row whose `past` is 0 starts a new sequence: its Mamba states are zeroed first (KV needs no
clearing: positions past a row's length are masked).

Runners (`runner=`): "reference" -- `onnx.reference.ReferenceEvaluator` with our plugin nodes as OpRuns
(`plugins/onnx_ops.py`); it evaluates every node the export emits, the FP4 blocked `DequantizeLinear` included.
"onnxruntime" -- onnxruntime's CPU provider with our plugin nodes as onnxruntime-extensions Python custom ops;
onnxruntime's CPU provider has no FLOAT4E2M1 `DequantizeLinear` kernel and the extensions' Python custom ops
are registered for float32 and live in the `ai.onnx.contrib` domain, so it runs float32 graphs without FP4
initializers (the bf16, fp8 and nvfp4-super recipes: NVFP4 experts reach their plugin node as INT8 bits), the
plugin nodes moved to that domain in memory. "auto" takes onnxruntime where it can run the
graph, else the reference evaluator (`runner_reason` says why).

Speculative verification (MTP) rolls the Mamba states back by snapshot and re-run: `snapshot(slots)` before a
verify forward of 1 + K tokens, and when fewer than K drafts are accepted, `restore` and run the accepted
tokens again (the plugin's state update is sequential over tokens, so the re-run reproduces the same state);
the graph keeps one `mamba_state_update` node per layer with `keep_steps=0`, so a prefill of any length
needs no per-token state outputs.

`greedy_generate(net, prompt, max_tokens, mtp=K)` is greedy decoding through the graphs (prefill, decode, MTP
draft / verify / rollback, the engine's schedule), which the tests compare with the native step token for
token; it also drives `runtime.trt_backend.TrtNetwork` (the same interface over TensorRT engines).

`OnnxBackend` is the engine's `onnx` step backend (`Engine(backend="onnx")`, `generate --backend onnx`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime.backend import StepBackendBase, register

RUNNERS = ("auto", "reference", "onnxruntime")


def _np_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


class _Graph:
    """One exported graph: its io.json entries, its runner, and its state pools.

    A state is a numpy array (Mamba rows, or a KV pool [pool, 2, ...]), or for KV a (key, value) pair of
    arrays [pool, kv_heads, max_seq_len, head_dim] (a `HybridCache`'s layout) stacked into the graph's input
    per call. Outputs are written back into the same arrays, so arrays that view other memory (the slot pool's
    tensors) are updated in place."""

    def __init__(
        self,
        d: Path,
        meta: dict[str, Any],
        pool: int,
        max_seq_len: int,
        runner: str,
        bind: dict[str, Any] | None = None,
    ) -> None:
        self.meta = meta
        self.path = d / meta["file"]
        self.inputs = {e["name"]: e for e in meta["inputs"]}
        self.outputs = [e["name"] for e in meta["outputs"]]
        dims = {"pool": pool, "max_seq_len": max_seq_len}
        self.state: dict[str, Any] = {}
        for e in meta["inputs"]:
            if e["role"] in ("kv_cache", "conv_state", "ssm_state"):
                shape = [dims[s] if isinstance(s, str) else s for s in e["shape"]]
                if bind is not None:
                    self.state[e["name"]] = bind[e["name"]]
                else:
                    self.state[e["name"]] = np.zeros(shape, _np_dtype(e["dtype"]))
        self.mamba = [n for n, e in self.inputs.items() if e["role"] in ("conv_state", "ssm_state")]
        self.runner, self.runner_reason = _pick_runner(self.path, runner)
        self._run = _ort_session(self.path) if self.runner == "onnxruntime" else _reference_session(self.path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states = {n: np.stack(v, axis=1) if isinstance(v, tuple) else v for n, v in self.state.items()}
        out = self._run({**feeds, **states}, self.outputs)
        for name, dst in self.state.items():
            new = out[f"present_{name}"]
            if isinstance(dst, tuple):
                np.copyto(dst[0], new[:, 0])
                np.copyto(dst[1], new[:, 1])
            else:
                np.copyto(dst, new)
        return out


def _reference_session(path: Path):
    from onnx.reference import ReferenceEvaluator

    from plugins.onnx_ops import OPS

    ev = ReferenceEvaluator(str(path), new_ops=list(OPS))

    def run(feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, ev.run(outputs, feeds), strict=True))

    return run


def _ort_unsupported(path: Path) -> str | None:
    """Why onnxruntime + the extensions' custom ops cannot run this graph (None: it can)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT4E2M1,):
            return f"{path.name} holds NVFP4 (FLOAT4E2M1) weights, which onnxruntime's CPU provider cannot dequantize"
    for vi in m.graph.input:
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT and vi.name not in (
            "input_ids",
            "past_lengths",
            "slot_idx",
        ):
            return f"{path.name} has {vi.name} in a non-float32 dtype (the custom ops are registered for float32)"
    return None


def _pick_runner(path: Path, runner: str) -> tuple[str, str]:
    if runner not in RUNNERS:
        raise RuntimeStateError(f"ONNX runner must be one of {RUNNERS}, got {runner!r}")
    if runner == "reference":
        return "reference", "asked for"
    why = _ort_unsupported(path)
    if why is None:
        try:
            import onnxruntime  # noqa: F401
            import onnxruntime_extensions  # noqa: F401
        except ImportError as e:
            why = f"onnxruntime / onnxruntime-extensions do not import ({e})"
    if why is None:
        return "onnxruntime", "every node runs in onnxruntime"
    if runner == "onnxruntime":
        raise RuntimeStateError(f"runner 'onnxruntime' cannot run {path}: {why}; use runner='reference'")
    return "reference", why


def _ort_session(path: Path):
    import onnx
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    from plugins.onnx_ops import register_ort_ops

    contrib = register_ort_ops()
    m = onnx.load(str(path))  # with the external data: the session is built from memory
    nodes = []
    for n in m.graph.node:
        if n.domain == "trtllm_nemotron":
            n.domain = contrib
        if n.op_type == "latent_moe_experts":  # BF16 expert weights widened in the graph (float32 custom op)
            for k in (4, 5):
                wide = f"{n.input[k]}/float32"
                nodes.append(onnx.helper.make_node("Cast", [n.input[k]], [wide], to=onnx.TensorProto.FLOAT))
                n.input[k] = wide
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    for o in m.opset_import:
        if o.domain == "trtllm_nemotron":
            o.domain = contrib
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, sess.run(outputs, feeds), strict=True))

    return run


class OnnxNetwork:
    """The exported backbone and MTP graphs with their state pools (see the module docstring)."""

    def __init__(
        self,
        onnx_dir: str | Path,
        *,
        pool: int,
        max_seq_len: int,
        runner: str = "auto",
        bind: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """bind: {"model": {state name: array or (key, value)}, "mtp": {...}} to run on existing state memory
        (each state updated in place) instead of zeroed arrays of the graph's own."""
        d = Path(onnx_dir)
        if not (d / "io.json").is_file():
            raise RuntimeStateError(
                f"{d} has no io.json: not an exported ONNX dir; build the engine with `trtllm-nemotron build --onnx`"
            )
        self.io = json.loads((d / "io.json").read_text())
        self.dir = d
        self.pool, self.max_seq_len = pool, max_seq_len
        bind = bind or {}
        self.backbone = _Graph(d, self.io["graphs"]["model"], pool, max_seq_len, runner, bind.get("model"))
        m = self.io["graphs"].get("mtp")
        self.mtp_graph = _Graph(d, m, pool, max_seq_len, runner, bind.get("mtp")) if m else None
        self.dtype = _np_dtype(self.io["dtype"])

    @property
    def runner(self) -> str:
        return self.backbone.runner

    def _check(self, T: int, past: list[int], slots: list[int]) -> None:
        if any(not 0 <= s < self.pool for s in slots):
            raise RuntimeStateError(f"slots {slots} out of range 0..{self.pool - 1}")
        if max(past) + T > self.max_seq_len:
            raise RuntimeStateError(
                f"a row would reach {max(past) + T} tokens but the ONNX state pools hold {self.max_seq_len}"
            )

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
        """Backbone over ids [batch][T] at positions past[b]..; -> (logits [batch, T, vocab] fp32, final-normed
        hidden [batch, T, hidden])."""
        self._check(len(ids[0]), past, slots)
        fresh = [s for s, p in zip(slots, past, strict=True) if p == 0]
        if fresh:
            for name in self.backbone.mamba:
                self.backbone.state[name][fresh] = 0
        out = self.backbone.run(self._feeds(ids, past, slots))
        return out["logits"], out["hidden_states"]

    def mtp(self, hidden: np.ndarray, next_ids: list[list[int]], past: list[int], slots: list[int]):
        """MTP block over (hidden [batch, T, hidden], next ids [batch][T]) at MTP positions past[b]..;
        -> (draft logits [batch, T, vocab] fp32, final-normed g [batch, T, hidden])."""
        if self.mtp_graph is None:
            raise RuntimeStateError(f"{self.dir} has no mtp.onnx (the model has no MTP layers); use mtp=0")
        self._check(len(next_ids[0]), past, slots)
        feeds = self._feeds(next_ids, past, slots)
        feeds["hidden_states"] = np.asarray(hidden, dtype=self.dtype)
        out = self.mtp_graph.run(feeds)
        return out["logits"], out["mtp_hidden_states"]

    def snapshot(self, slots: list[int]) -> dict[str, np.ndarray]:
        """Copies of the Mamba state rows of `slots` (for a verify rollback)."""
        return {n: self.backbone.state[n][slots].copy() for n in self.backbone.mamba}

    def restore(self, slots: list[int], snap: dict[str, np.ndarray]) -> None:
        for n, v in snap.items():
            self.backbone.state[n][slots] = v


class GraphNetwork(Protocol):
    """What `greedy_generate` / `GraphStepBackend` drive: `OnnxNetwork`, or `trt_backend.TrtNetwork`."""

    def forward(
        self, ids: list[list[int]], past: list[int], slots: list[int]
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def mtp(
        self, hidden: np.ndarray, next_ids: list[list[int]], past: list[int], slots: list[int]
    ) -> Any: ...

    def snapshot(self, slots: list[int]) -> dict[str, Any]: ...

    def restore(self, slots: list[int], snap: dict[str, Any]) -> None: ...


def verify_greedy(net: GraphNetwork, seqs: list[list[int]], past: list[int], slots: list[int], K: int):
    """One greedy MTP iteration (the native step's `spec_step_greedy`): seqs[b] = [last token, d_1..d_K] at
    positions past[b]... Returns (target tokens y [batch][K+1], accepted drafts j [batch], next drafts
    [batch][K]); the backbone keeps the state after token j, and the caller's lengths advance by j + 1."""
    snap = net.snapshot(slots)
    logits, h = net.forward(seqs, past, slots)
    y = logits.argmax(-1)  # [batch, K+1]
    acc = []
    for b, s in enumerate(seqs):
        j = 0
        while j < K and s[j + 1] == y[b, j]:
            j += 1
        acc.append(j)
    redo = [b for b, j in enumerate(acc) if j < K]
    if redo:  # roll the Mamba state back to before the step and re-run the accepted tokens of those rows
        rs = [slots[b] for b in redo]
        net.restore(rs, {n: v[redo] for n, v in snap.items()})
        for b in redo:
            net.forward([seqs[b][: acc[b] + 1]], [past[b]], [slots[b]])
    g_logits, g = net.mtp(h, y.tolist(), past, slots)
    bi = np.arange(len(seqs))
    ja = np.asarray(acc)
    d = g_logits[bi, ja].argmax(-1)  # [batch]
    drafts = [d]
    g = g[bi, ja][:, None]
    pos = [p + j + 1 for p, j in zip(past, acc, strict=True)]
    for i in range(K - 1):
        dl, g = net.mtp(g, d[:, None].tolist(), [p + i for p in pos], slots)
        d = dl[:, 0].argmax(-1)
        drafts.append(d)
    return y.tolist(), acc, np.stack(drafts, axis=1).tolist()


def greedy_generate(
    net: GraphNetwork,
    prompt: list[int],
    max_tokens: int,
    *,
    mtp: int = 0,
    slot: int = 0,
    eos: tuple[int, ...] = (),
) -> list[int]:
    """Greedy decoding of one prompt through the graphs (whole prompt as one prefill); with mtp=K, MTP drafts
    and verification. Returns the generated token ids (stops after `max_tokens` or at an `eos` id)."""
    n = len(prompt)
    logits, h = net.forward([prompt], [0], [slot])
    out = [int(logits[0, -1].argmax())]
    if not mtp:
        while len(out) < max_tokens and out[-1] not in eos:
            logits, _ = net.forward([[out[-1]]], [n + len(out) - 1], [slot])
            out.append(int(logits[0, -1].argmax()))
        return out[:max_tokens]
    # MTP prefill: the block over (h_t, x_{t+1}) for the whole prompt, the last entry drafts
    dl, g = net.mtp(h, [prompt[1:] + out], [0], [slot])
    d = [int(dl[0, -1].argmax())]
    gi = g[:, -1:]
    for i in range(mtp - 1):
        dl1, gi = net.mtp(gi, [[d[-1]]], [n + i], [slot])
        d.append(int(dl1[0, 0].argmax()))
    past = n
    while len(out) < max_tokens and out[-1] not in eos:
        y, acc, drafts = verify_greedy(net, [[out[-1]] + d], [past], [slot], mtp)
        out += y[0][: acc[0] + 1]
        past += acc[0] + 1
        d = drafts[0]
    if any(t in eos for t in out):
        out = out[: next(i for i, t in enumerate(out) if t in eos) + 1]
    return out[:max_tokens]


# ---------------------------------------------------------------------------------------------------------------
# the `onnx` step backend (runtime/backend.py protocol): Engine(backend="onnx"), generate --backend onnx


def _view(t: Any) -> np.ndarray:
    """A numpy array sharing a CPU torch tensor's memory (bfloat16 through its int16 bits)."""
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _bind(cache: Any, prefix: str) -> dict[str, Any]:
    """A `HybridCache`'s tensors under the graph's state names (views: the graph updates the cache in place)."""
    out: dict[str, Any] = {f"{prefix}kv_cache_{i}": (_view(k), _view(v)) for i, (k, v) in cache.kv.items()}
    out.update({f"conv_state_{i}": _view(t) for i, t in cache.conv.items()})
    out.update({f"ssm_state_{i}": _view(t) for i, t in cache.ssm.items()})
    return out


class GraphStepBackend(StepBackendBase):
    """The step protocol over an exported-graph network `self.net` (`OnnxNetwork`, or `trt_backend.TrtNetwork`:
    `forward`, `mtp`, `snapshot`, `restore`) at the slot pool's committed lengths. `verify` keeps the rows'
    pre-step Mamba state; `commit` restores it and re-runs the kept tokens of each row that rejected a draft
    (the recurrence is sequential over tokens, so the re-run reproduces the state exactly)."""

    net: GraphNetwork

    def __init__(self, model, pool) -> None:
        super().__init__(model, pool)
        self._pending: tuple[list[int], list[int], list[list[int]], dict[str, Any]] | None = None

    def _torch(self, a: np.ndarray, *, float_only: bool = False):
        import torch

        t = torch.from_numpy(np.asarray(a, dtype=np.float32))
        dt = torch.float32 if float_only else self.model.backbone.embeddings.weight.dtype
        return t.to(device=self.device, dtype=dt)

    def _cache(self, mtp: bool) -> Any:
        c = self.pool.mtp_cache if mtp else self.pool.cache
        if c is None:
            raise RuntimeStateError("an MTP step without an MTP cache: load the engine with mtp > 0")
        return c

    def _lengths(self, rows: list[int], mtp: bool = False) -> list[int]:
        return self._cache(mtp).lengths[self._rows(rows)].tolist()

    def _set_lengths(self, rows: list[int], values: list[int], mtp: bool = False) -> None:
        import torch

        c = self._cache(mtp)
        c.lengths[self._rows(rows)] = torch.tensor(values, device=c.lengths.device)

    def prefill(self, tokens: list[int], row: int):
        past = self._lengths([row])
        _, h = self.net.forward([tokens], past, [row])
        self._set_lengths([row], [past[0] + len(tokens)])
        return self._torch(h)

    def decode(self, tokens: list[int], rows: list[int]):
        past = self._lengths(rows)
        logits, _ = self.net.forward([[t] for t in tokens], past, rows)
        self._set_lengths(rows, [p + 1 for p in past])
        return self._torch(logits[:, 0], float_only=True)

    def verify(self, tokens: list[list[int]], rows: list[int]):
        past = self._lengths(rows)
        snap = self.net.snapshot(rows)
        logits, h = self.net.forward(tokens, past, rows)
        self._pending = (list(rows), past, [list(t) for t in tokens], snap)
        return self._torch(h), self._torch(logits, float_only=True)

    def commit(self, rows: list[int], keep: list[int]) -> None:
        if self._pending is None or self._pending[0] != list(rows):
            raise RuntimeStateError(f"commit for rows {rows} does not follow a verify of those rows")
        _, past, tokens, snap = self._pending
        self._pending = None
        T = len(tokens[0])
        if len(keep) != len(rows) or any(not 1 <= k <= T for k in keep):
            raise RuntimeStateError(f"commit: keep {keep} must have {len(rows)} entries in 1..{T}")
        redo = [b for b, k in enumerate(keep) if k < T]
        if redo:  # back to the state before the step, then only the kept tokens of those rows
            self.net.restore([rows[b] for b in redo], {n: v[redo] for n, v in snap.items()})
            for b in redo:
                self.net.forward([tokens[b][: keep[b]]], [past[b]], [rows[b]])
        self._set_lengths(rows, [p + k for p, k in zip(past, keep, strict=True)])

    def mtp(self, hidden, next_ids, rows, *, logits=True):
        past = self._lengths(rows, mtp=True)
        ids = next_ids.tolist() if hasattr(next_ids, "tolist") else next_ids
        dl, g = self.net.mtp(hidden.float().cpu().numpy(), ids, past, rows)
        self._set_lengths(rows, [p + len(ids[0]) for p in past], mtp=True)
        return self._torch(g), (self._torch(dl, float_only=True) if logits else None)


class OnnxBackend(GraphStepBackend):
    """The engine's steps through the exported graphs.

    Graphs: the engine dir's `onnx/` when the model was loaded from an engine dir whose export has the model's
    activation dtype (a cpu-target build: float32, FP8 / NVFP4 weights dequantized in the graph); otherwise the
    loaded model's own weights are exported to a temporary dir first (`export_model_onnx`). The graphs' state
    inputs are the slot pool's caches (numpy views of its tensors, updated in place; KV stacked into the
    graph's [pool, 2, ...] layout per call) and the committed lengths are the pool's, as for every backend."""

    name = "onnx"

    @classmethod
    def unsupported_reason(cls, model, pool) -> str | None:
        import torch

        try:
            import onnx  # noqa: F401
        except ImportError as e:
            return f"onnx does not import ({e}); pip install 'trtllm-nemotron[onnx]'"
        p = model.backbone.embeddings.weight
        if p.device.type != "cpu":
            return "the onnx backend runs on CPU (TensorRT runs the same graphs on GPUs: build --trt)"
        if p.dtype not in (torch.float32, torch.bfloat16):
            return f"model dtype {p.dtype}: the ONNX export takes float32 or bfloat16"
        if getattr(model, "clamp_dt_min", False) not in (False, True):
            return "clamp_dt_min='prefill_only' has no graph form (one graph serves prefill and decode)"
        ssm = next(iter(pool.cache.ssm.values()), None)
        if ssm is not None and ssm.dtype != torch.float32:
            return f"the exported graphs keep the SSM state in float32, the pool holds {ssm.dtype}"
        return None

    def __init__(self, model, pool) -> None:
        import tempfile

        super().__init__(model, pool)
        dtype = str(model.backbone.embeddings.weight.dtype).removeprefix("torch.")
        src = getattr(model, "source_path", None)
        d = Path(src).parent / "onnx" if src else None
        self._tmp = None
        if (
            d is None
            or not (d / "io.json").is_file()
            or json.loads((d / "io.json").read_text())["dtype"] != dtype
        ):
            from builder.onnx_export import export_model_onnx

            self._tmp = tempfile.TemporaryDirectory(prefix="trtllm_nemotron-onnx-")
            d = Path(self._tmp.name)
            export_model_onnx(model, d, dtype=dtype)
        self.onnx_dir = d
        c, m = pool.cache, pool.mtp_cache
        if m is not None and (m.batch_size, m.max_seq_len) != (c.batch_size, c.max_seq_len):
            raise RuntimeStateError("the MTP cache must have the backbone cache's rows and length")
        bind = {"model": _bind(c, ""), **({"mtp": _bind(m, "mtp_")} if m is not None else {})}
        self.net = OnnxNetwork(d, pool=c.batch_size, max_seq_len=c.max_seq_len, bind=bind)


register(OnnxBackend)
