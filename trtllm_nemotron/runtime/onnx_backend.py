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
token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_nemotron.errors import RuntimeStateError

RUNNERS = ("auto", "reference", "onnxruntime")


def _np_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


class _Graph:
    """One exported graph: its io.json entries, its runner, and its state pools."""

    def __init__(self, d: Path, meta: dict[str, Any], pool: int, max_seq_len: int, runner: str) -> None:
        self.meta = meta
        self.path = d / meta["file"]
        self.inputs = {e["name"]: e for e in meta["inputs"]}
        self.outputs = [e["name"] for e in meta["outputs"]]
        dims = {"pool": pool, "max_seq_len": max_seq_len}
        self.state: dict[str, np.ndarray] = {}
        for e in meta["inputs"]:
            if e["role"] in ("kv_cache", "conv_state", "ssm_state"):
                shape = [dims[s] if isinstance(s, str) else s for s in e["shape"]]
                self.state[e["name"]] = np.zeros(shape, _np_dtype(e["dtype"]))
        self.mamba = [n for n, e in self.inputs.items() if e["role"] in ("conv_state", "ssm_state")]
        self.runner, self.runner_reason = _pick_runner(self.path, runner)
        self._run = _ort_session(self.path) if self.runner == "onnxruntime" else _reference_session(self.path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._run({**feeds, **self.state}, self.outputs)
        for name in self.state:
            self.state[name] = out[f"present_{name}"]
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
            "input_ids", "past_lengths", "slot_idx"
        ):  # fmt: skip
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

    def __init__(self, onnx_dir: str | Path, *, pool: int, max_seq_len: int, runner: str = "auto") -> None:
        d = Path(onnx_dir)
        if not (d / "io.json").is_file():
            raise RuntimeStateError(
                f"{d} has no io.json: not an exported ONNX dir; build the engine with `trtllm-nemotron build --onnx`"
            )
        self.io = json.loads((d / "io.json").read_text())
        self.dir = d
        self.pool, self.max_seq_len = pool, max_seq_len
        self.backbone = _Graph(d, self.io["graphs"]["model"], pool, max_seq_len, runner)
        m = self.io["graphs"].get("mtp")
        self.mtp_graph = _Graph(d, m, pool, max_seq_len, runner) if m else None
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


def verify_greedy(net: OnnxNetwork, seqs: list[list[int]], past: list[int], slots: list[int], K: int):
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


def greedy_generate(net: OnnxNetwork, prompt: list[int], max_tokens: int, *, mtp: int = 0, slot: int = 0,
                    eos: tuple[int, ...] = ()) -> list[int]:  # fmt: skip
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
