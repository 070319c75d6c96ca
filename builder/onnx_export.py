"""The network as ONNX with our ops as TensorRT plugin nodes (TensorRT-Edge-LLM's graph contract).

`export_onnx(checkpoint_dir, out_dir)` writes

    out_dir/model.onnx, model.onnx.data    the backbone: embedding -> layers -> final norm -> LM head
    out_dir/mtp.onnx, mtp.onnx.data        the MTP block (depth 0) as its own graph; the tensors it shares with
                                           the backbone (embedding, LM head) point into model.onnx.data
    out_dir/io.json                        every graph input and output: role, layer, dtype, shape (named dims)

What the graphs are (specs/trt_engine.md §1.5, §2.2-2.3, §3.1):
- ONNX opset 23 (`ir_version` 10, which onnxruntime accepts) plus the plugin domain `trtllm_nemotron`. Each of
  our ops is one node: `op_type` = the QDP name, `domain` = `plugin_namespace` = `trtllm_nemotron`, attribute
  `aot=1` (TensorRT's parser then asks for the AOT implementation), the QDP's attributes (INT / FLOAT only,
  int32-safe) and its inputs / outputs in the QDP's order. Per Mamba layer exactly one `mamba_state_update`,
  per MoE layer one `latent_moe_routing`, one `moe_expert_permutation` and one expert node
  (`latent_moe_experts`, or `latent_moe_experts_nvfp4` for NVFP4 experts).
- One graph serves prefill and decode: `input_ids [batch, tokens]` with both dims dynamic. State is graph I/O,
  Edge-LLM style: `kv_cache_<i> [pool, 2, kv_heads, max_seq_len, head_dim]` per attention layer and
  `conv_state_<i> [pool, conv_dim, K-1]`, `ssm_state_<i> [pool, H, P, N]` (fp32) per Mamba layer, each with a
  `present_*` output of the same shape; batch row b reads and writes pool row `slot_idx[b]` (int32) and its
  new tokens sit at positions `past_lengths[b]...` (int32). A runtime binds each state's input and output to
  the same buffer (in place, as Edge-LLM's runtime does), or copies the output back.
- Outputs `logits [batch, tokens, vocab]` fp32 and `hidden_states [batch, tokens, hidden]` (final-normed, what
  the MTP graph consumes).
- Weights are stored as in the checkpoint, as external data: BF16 / FP32 tensors as they are; FP8 weights as
  FLOAT8E4M3FN initializers through `DequantizeLinear` with their per-tensor scale; NVFP4 weights as
  FLOAT4E2M1 initializers [out, in] through the two-level blocked `DequantizeLinear` (FP8 block scales x FP32
  global scale, then `axis=-1, block_size=16`), ModelOpt's `fp4qdq_to_2dq` pattern; scale dtype = output dtype
  (FP32) throughout (onnxruntime #32719). Routed experts go to the expert plugin in their stored form (BF16, or
  packed E2M1 + FP8 block scales + FP32 global scale, dequantised in its kernel). Activation quantization
  (`input_scale`) is not in the graph: it computes what the runtime computes (weights dequantized, activations
  in `dtype`), which is what the CPU verification compares token for token.
- `dtype` is the activation dtype: float32 (the CPU runtime's, the default) or bfloat16 (GPU targets).

Unlike Edge-LLM (torch.onnx dynamo export of torch.library stubs + onnxscript translations), the graph is
written node by node with `onnx.helper`: the weights never pass through torch tracing (FP4 / FP8 initializers
keep their bytes), the data-dependent MoE dispatch stays inside the plugins, and a Super-sized export
streams one tensor at a time into the data file instead of holding the network in memory.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.errors import BuildError

DOMAIN = "trtllm_nemotron"  # ONNX domain == QDP plugin namespace
OPSET = 23
IR_VERSION = 10  # onnx 1.23 writes 11+, which onnxruntime 1.2x/1.3x refuses (specs/trt_engine.md §7)
IO_FORMAT = 1
MODEL_FILE, MTP_FILE, IO_FILE = "model.onnx", "mtp.onnx", "io.json"
EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inside the .onnx file
ALIGN = 64  # byte alignment of each tensor in the data files
DTYPES = ("float32", "bfloat16")

# safetensors dtype -> (ONNX TensorProto enum name, bytes per element or None for packed FP4)
_ST_TO_ONNX = {
    "BF16": "BFLOAT16",
    "F16": "FLOAT16",
    "F32": "FLOAT",
    "F8_E4M3": "FLOAT8E4M3FN",
    "I32": "INT32",
    "I64": "INT64",
}


def _onnx():
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - onnx is a core dependency
        raise BuildError(
            f"the ONNX export needs the `onnx` package ({e}); pip install 'trtllm-nemotron[onnx]'"
        ) from e
    return onnx


class _DataFile:
    """Appends tensor bytes to one external-data file and returns TensorProtos that reference them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.offset = 0

    def add(self, name: str, data_type: int, dims: list[int], raw: bytes) -> Any:
        onnx = _onnx()
        t = onnx.TensorProto()
        t.name, t.data_type = name, data_type
        t.dims.extend(int(d) for d in dims)
        if len(raw) < EXTERNAL_MIN_BYTES:
            t.raw_data = raw
            return t
        pad = (-self.offset) % ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        self.f.write(raw)
        self._ref(t, self.path.name, self.offset, len(raw))
        self.offset += len(raw)
        return t

    @staticmethod
    def _ref(t: Any, location: str, offset: int, length: int) -> None:
        onnx = _onnx()
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v

    def close(self) -> None:
        self.f.close()


class _Graph:
    """Nodes, initializers, inputs and outputs of one graph, with unique value names."""

    def __init__(self, name: str, data: _DataFile, shared: dict[str, Any]) -> None:
        self.name = name
        self.data = data
        self.shared = shared  # tensor key -> TensorProto already written (by this or the other graph)
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.io: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        *,
        name: str | None = None,
        domain: str = "",
        outs: list[str] | None = None,
        **attrs: Any,
    ) -> list[str]:
        onnx = _onnx()
        outs = outs or [self.fresh(f"{(name or op_type).replace('/', '_')}") for _ in range(n_out)]
        node = onnx.helper.make_node(
            op_type, inputs, outs, name=name or self.fresh(op_type), domain=domain, **attrs
        )
        self.nodes.append(node)
        return outs

    def op1(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        return self.op(op_type, list(inputs), **attrs)[0]

    def const(self, values: Any, dtype: str = "int64") -> str:
        """A small constant initializer (ints for shapes / axes, a float scalar)."""
        import numpy as np

        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            onnx = _onnx()
            name = self.fresh("const")
            self.inits[name] = onnx.numpy_helper.from_array(arr, name)
            self._consts[key] = name
        return self._consts[key]

    def tensor(self, key: str, make: Callable[[], tuple[int, list[int], bytes]]) -> str:
        """An initializer for checkpoint tensor `key` (written once into the data files, shared by graphs)."""
        onnx = _onnx()
        if key not in self.shared:
            data_type, dims, raw = make()
            self.shared[key] = self.data.add(key, data_type, dims, raw)
        if key not in self.inits:
            t = onnx.TensorProto()
            t.CopyFrom(self.shared[key])
            self.inits[key] = t
        return key

    def add_input(self, name: str, elem: str, shape: list[Any], role: str, layer: int | None = None) -> str:
        self.inputs.append(_value_info(name, elem, shape))
        self.io["inputs"].append(_io_entry(name, elem, shape, role, layer))
        return name

    def add_output(self, name: str, elem: str, shape: list[Any], role: str, layer: int | None = None) -> None:
        self.outputs.append(_value_info(name, elem, shape))
        self.io["outputs"].append(_io_entry(name, elem, shape, role, layer))

    def model(self) -> Any:
        onnx = _onnx()
        g = onnx.helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, list(self.inits.values())
        )
        m = onnx.helper.make_model(
            g,
            opset_imports=[onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid(DOMAIN, 1)],
            producer_name="trtllm-nemotron",
        )
        m.ir_version = IR_VERSION
        return m


_ELEM = {"float32": "FLOAT", "bfloat16": "BFLOAT16", "int32": "INT32", "int64": "INT64", "bool": "BOOL"}


def _value_info(name: str, elem: str, shape: list[Any]) -> Any:
    onnx = _onnx()
    return onnx.helper.make_tensor_value_info(name, getattr(onnx.TensorProto, _ELEM[elem]), shape)


def _io_entry(name: str, elem: str, shape: list[Any], role: str, layer: int | None) -> dict[str, Any]:
    return {"name": name, "role": role, "layer": layer, "dtype": elem, "shape": list(shape)}


class _Exporter:
    """Builds the backbone and MTP graphs of one checkpoint (see the module docstring)."""

    def __init__(
        self, reader: Any, out: Path, dtype: str, progress: bool, dt_min: float | None = None
    ) -> None:
        self.r = reader
        self.cfg: NemotronHConfig = reader.config
        self.out = out
        self.dtype = dtype
        self.progress = progress
        self.dt_min = dt_min  # clamp softplus(dt + dt_bias) from below (a model built with clamp_dt_min=True)
        self.shared: dict[str, Any] = {}
        self.counts: dict[str, dict[str, int]] = {}

    # ---- tensors ----
    def _raw(self, name: str) -> tuple[int, list[int], bytes]:
        onnx = _onnx()
        st = self.r.st_dtype(name)
        if st not in _ST_TO_ONNX:
            raise BuildError(f"tensor {name} has dtype {st}, which the ONNX export does not handle")
        t = self.r.get(name).contiguous()
        import torch

        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return getattr(onnx.TensorProto, _ST_TO_ONNX[st]), list(t.shape), raw

    def weight(self, g: _Graph, name: str, to: str | None = None, shape: list[int] | None = None) -> str:
        """A stored float tensor as a value in dtype `to` (default: the activation dtype)."""
        onnx = _onnx()

        def make() -> tuple[int, list[int], bytes]:
            dt, dims, raw = self._raw(name)
            return dt, (shape or dims), raw

        v = g.tensor(name, make)
        to = to or self.dtype
        if self.r.st_dtype(name) != {"float32": "F32", "bfloat16": "BF16"}[to]:
            v = g.op1("Cast", v, to=getattr(onnx.TensorProto, _ELEM[to]))
        return v

    def linear_weight(self, g: _Graph, module: str) -> str:
        """`<module>.weight` [out, in] in the activation dtype: dequantized in the graph when FP8 / NVFP4."""
        onnx = _onnx()
        name = f"{module}.weight"
        st = self.r.st_dtype(name)
        if st == "U8":  # NVFP4: packed E2M1 pairs [out, in/2] -> FLOAT4E2M1 [out, in]
            out_f, half = self.r.shape(name)
            w4 = g.tensor(name, lambda: (onnx.TensorProto.FLOAT4E2M1, [out_f, 2 * half], self._bytes(name)))
            s8 = g.tensor(f"{module}.weight_scale", lambda: self._raw(f"{module}.weight_scale"))
            s2 = g.tensor(f"{module}.weight_scale_2", lambda: self._scalar(f"{module}.weight_scale_2"))
            scale = g.op1("DequantizeLinear", s8, s2, name=f"{module}/weight_scale_dq")
            w = g.op1("DequantizeLinear", w4, scale, axis=-1, block_size=16, name=f"{module}/weight_dq")
        elif st == "F8_E4M3":
            w8 = g.tensor(name, lambda: self._raw(name))
            s = g.tensor(f"{module}.weight_scale", lambda: self._scalar(f"{module}.weight_scale"))
            w = g.op1("DequantizeLinear", w8, s, name=f"{module}/weight_dq")
        else:
            return self.weight(g, name)
        return w if self.dtype == "float32" else g.op1("Cast", w, to=onnx.TensorProto.BFLOAT16)

    def _bytes(self, name: str) -> bytes:
        import torch

        return self.r.get(name).contiguous().view(torch.uint8).numpy().tobytes()

    def _scalar(self, name: str) -> tuple[int, list[int], bytes]:
        """A per-tensor fp32 scale as a 0-d FLOAT tensor (checkpoints store it as [] or [1])."""
        onnx = _onnx()
        import numpy as np

        v = np.asarray(self.r.get(name).float().reshape(()).numpy(), dtype=np.float32)
        return onnx.TensorProto.FLOAT, [], v.tobytes()

    def linear(self, g: _Graph, x: str, module: str, bias: bool = False) -> str:
        """x [n, in] -> x @ W^T (+ b): a Gemm with transB=1 (TensorRT fuses DQ -> Gemm for FP8 / FP4)."""
        w = self.linear_weight(g, module)
        ins = [x, w] + ([self.weight(g, f"{module}.bias")] if bias else [])
        return g.op1("Gemm", *ins, transB=1, name=f"{module}/gemm")

    # ---- blocks ----
    def rms_norm(self, g: _Graph, x: str, weight: str, out_f32: bool = False) -> str:
        onnx = _onnx()
        xf = x if self.dtype == "float32" else g.op1("Cast", x, to=onnx.TensorProto.FLOAT)
        ms = g.op1("ReduceMean", g.op1("Mul", xf, xf), g.const([-1]), keepdims=1)
        eps = g.const(self.cfg.layer_norm_epsilon, "float32")
        inv = g.op1("Reciprocal", g.op1("Sqrt", g.op1("Add", ms, eps)))
        y = g.op1("Mul", self.weight(g, weight, to="float32"), g.op1("Mul", xf, inv))
        return y if out_f32 or self.dtype == "float32" else g.op1("Cast", y, to=onnx.TensorProto.BFLOAT16)

    def to_act(self, g: _Graph, x: str) -> str:
        onnx = _onnx()
        return x if self.dtype == "float32" else g.op1("Cast", x, to=onnx.TensorProto.BFLOAT16)

    def relu2(self, g: _Graph, x: str) -> str:
        r = g.op1("Relu", x)
        return g.op1("Mul", r, r)

    def mlp(self, g: _Graph, x: str, prefix: str) -> str:
        b = self.cfg.mlp_bias
        return self.linear(
            g, self.relu2(g, self.linear(g, x, f"{prefix}.up_proj", b)), f"{prefix}.down_proj", b
        )

    def mamba(self, g: _Graph, x: str, p: str, i: int, btc: str) -> str:
        """x [n, hidden] (normed) -> [n, hidden]; one mamba_state_update plugin node on the layer's pools."""
        onnx = _onnx()
        c = self.cfg
        H, P, N, G, K = c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size, c.n_groups, c.conv_kernel
        proj = self.linear(g, x, f"{p}.in_proj", c.use_bias)  # [n, d_in_proj]
        z, xbc, dt = g.op("Split", [proj, g.const([c.d_inner, c.conv_dim, H])], 3, axis=-1, name=f"{p}/split")
        xbc3, dt3 = g.op1("Reshape", xbc, btc), g.op1("Reshape", dt, btc)  # [batch, tokens, .]
        if (
            self.dt_min is not None
        ):  # clamp(softplus(u), m) == softplus(max(u, softplus^-1(m))) (model/ops.py)
            dt3 = g.op1("Max", dt3, g.tensor(f"{p}.dt_floor", lambda: self._dt_floor(f"{p}.dt_bias")))
        conv_w = self.weight(g, f"{p}.conv1d.weight", shape=[c.conv_dim, K])
        if c.use_conv_bias:
            conv_b = self.weight(g, f"{p}.conv1d.bias")
        else:
            import numpy as np

            conv_b = g.op1(
                "Cast",
                g.const(np.zeros(c.conv_dim), "float32"),
                to=getattr(onnx.TensorProto, _ELEM[self.dtype]),
            )
        dt_bias = self.weight(g, f"{p}.dt_bias", to="float32")
        A = g.tensor(f"{p}.A", lambda: self._neg_exp(f"{p}.A_log"))  # A = -exp(A_log), fp32, at export
        D = self.weight(g, f"{p}.D", to="float32")
        conv_in = g.add_input(f"conv_state_{i}", self.dtype, ["pool", c.conv_dim, K - 1], "conv_state", i)
        ssm_in = g.add_input(f"ssm_state_{i}", "float32", ["pool", H, P, N], "ssm_state", i)
        # the rows' conv windows, read before the plugin updates the pool in place (the QDP's `conv_window`)
        window = g.op1("Gather", conv_in, "slot_idx", axis=0, name=f"{p}/conv_window")
        outs = [
            g.fresh(f"{p}/y"),
            f"present_conv_state_{i}",
            f"present_ssm_state_{i}",
            g.fresh("ssm_steps"),
            g.fresh("conv_steps"),
        ]
        g.op(
            "mamba_state_update",
            [xbc3, dt3, conv_w, conv_b, dt_bias, A, D, "slot_idx", conv_in, ssm_in, window],
            domain=DOMAIN,
            outs=outs,
            name=f"{p}/mamba_state_update",
            **_plugin_attrs(num_heads=H, n_groups=G, head_dim=P, state_size=N, conv_kernel=K, keep_steps=0),
        )
        g.add_output(outs[1], self.dtype, ["pool", c.conv_dim, K - 1], "present_conv_state", i)
        g.add_output(outs[2], "float32", ["pool", H, P, N], "present_ssm_state", i)
        y = g.op1("Reshape", outs[0], g.const([-1, c.d_inner]))  # [n, d_inner] fp32
        # gated group RMSNorm (norm_before_gate=False), fp32, then one rounding before out_proj
        zf = z if self.dtype == "float32" else g.op1("Cast", z, to=onnx.TensorProto.FLOAT)
        u = g.op1("Mul", y, g.op1("Mul", zf, g.op1("Sigmoid", zf)))
        gs = c.norm_group_size
        ug = g.op1("Reshape", u, g.const([-1, c.d_inner // gs, gs]))
        ms = g.op1("ReduceMean", g.op1("Mul", ug, ug), g.const([-1]), keepdims=1)
        inv = g.op1("Reciprocal", g.op1("Sqrt", g.op1("Add", ms, g.const(c.layer_norm_epsilon, "float32"))))
        un = g.op1("Reshape", g.op1("Mul", ug, inv), g.const([-1, c.d_inner]))
        yn = g.op1("Mul", self.weight(g, f"{p}.norm.weight", to="float32"), un)
        return self.linear(g, self.to_act(g, yn), f"{p}.out_proj", c.use_bias)

    def _dt_floor(self, dt_bias: str) -> tuple[int, list[int], bytes]:
        from trtllm_nemotron.model.ops import _softplus_inverse

        onnx = _onnx()
        assert self.dt_min is not None
        floor = (_softplus_inverse(self.dt_min) - self.r.get(dt_bias).float()).numpy()
        if self.dtype == "bfloat16":
            import torch

            raw = torch.from_numpy(floor).to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
            return onnx.TensorProto.BFLOAT16, list(floor.shape), raw
        return onnx.TensorProto.FLOAT, list(floor.shape), floor.tobytes()

    def _neg_exp(self, name: str) -> tuple[int, list[int], bytes]:
        import torch

        onnx = _onnx()
        a = -torch.exp(self.r.get(name).float())
        return onnx.TensorProto.FLOAT, list(a.shape), a.numpy().tobytes()

    def attention(self, g: _Graph, x: str, p: str, i: int, prefix: str, shp: dict[str, str]) -> str:
        """x [n, hidden] (normed) -> [n, hidden]: GQA over the layer's KV pool (NoPE), written in place.

        New K/V go to pool row slot_idx[b], positions pos[b, t] = past_lengths[b] + t (ScatterND); the
        queries attend to every pool position <= their own (the rest of the row is masked)."""
        onnx = _onnx()
        c = self.cfg
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        b = c.attention_bias
        q = g.op1("Reshape", self.linear(g, x, f"{p}.q_proj", b), shp["q"])  # [batch, T, nh, hd]
        k = g.op1("Reshape", self.linear(g, x, f"{p}.k_proj", b), shp["kv"])  # [batch, T, nkv, hd]
        v = g.op1("Reshape", self.linear(g, x, f"{p}.v_proj", b), shp["kv"])
        kt, vt = (g.op1("Transpose", t, perm=[0, 2, 1, 3]) for t in (k, v))  # [batch, nkv, T, hd]
        new = g.op1(
            "Concat", g.op1("Unsqueeze", kt, g.const([1])), g.op1("Unsqueeze", vt, g.const([1])), axis=1
        )  # [batch, 2, nkv, T, hd]
        cache_in = g.add_input(
            f"{prefix}kv_cache_{i}", self.dtype, ["pool", 2, nkv, "max_seq_len", hd], "kv_cache", i
        )
        present = f"present_{prefix}kv_cache_{i}"
        g.op("ScatterND", [cache_in, shp["kv_index"], new], outs=[present], name=f"{p}/kv_write")
        g.add_output(present, self.dtype, ["pool", 2, nkv, "max_seq_len", hd], "present_kv_cache", i)
        rows = g.op1("Gather", present, "slot_idx", axis=0)  # [batch, 2, nkv, S, hd]
        keys = g.op1("Gather", rows, g.const(0), axis=1)  # [batch, nkv, S, hd]
        vals = g.op1("Gather", rows, g.const(1), axis=1)
        # queries grouped per KV head: [batch, nkv, grp*T, hd] (head h = kv * grp + j, as SDPA's enable_gqa)
        qt = g.op1("Transpose", q, perm=[0, 2, 1, 3])  # [batch, nh, T, hd]
        qg = g.op1("Reshape", qt, shp["qg"])
        scores = g.op1("MatMul", qg, g.op1("Transpose", keys, perm=[0, 1, 3, 2]))  # [batch, nkv, grp*T, S]
        sf = scores if self.dtype == "float32" else g.op1("Cast", scores, to=onnx.TensorProto.FLOAT)
        sf = g.op1("Mul", sf, g.const(1.0 / math.sqrt(hd), "float32"))
        sf = g.op1("Reshape", sf, shp["scores5"])  # [batch, nkv, grp, T, S]
        sf = g.op1("Add", sf, shp["mask"])  # mask [batch, 1, 1, T, S]: 0 or -inf
        pr = g.op1("Reshape", g.op1("Softmax", sf, axis=-1), shp["scores4"])
        o = g.op1("MatMul", self.to_act(g, pr), vals)  # [batch, nkv, grp*T, hd]
        o = g.op1(
            "Transpose", g.op1("Reshape", o, shp["o5"]), perm=[0, 3, 1, 2, 4]
        )  # [batch, T, nkv, grp, hd]
        o = g.op1("Reshape", o, g.const([-1, nh * hd]))
        return self.linear(g, o, f"{p}.o_proj", b)

    def moe(self, g: _Graph, x: str, p: str) -> str:
        """x [n, hidden] (normed) -> [n, hidden]: router logits (fp32) -> routing plugin -> permutation plugin
        -> expert plugin on the latent projection -> fc2 latent projection, plus the shared expert."""
        onnx = _onnx()
        c = self.cfg
        E, k = c.n_routed_experts, c.num_experts_per_tok
        xf = x if self.dtype == "float32" else g.op1("Cast", x, to=onnx.TensorProto.FLOAT)
        logits = g.op1(
            "Gemm", xf, self.weight(g, f"{p}.gate.weight", to="float32"), transB=1, name=f"{p}/router"
        )
        bias = self.weight(g, f"{p}.gate.e_score_correction_bias", to="float32")
        w, idx = g.op(
            "latent_moe_routing",
            [logits, bias],
            2,
            domain=DOMAIN,
            name=f"{p}/latent_moe_routing",
            **_plugin_attrs(
                num_experts=E,
                top_k=k,
                n_group=c.n_group,
                topk_group=c.topk_group,
                norm_topk_prob=int(c.norm_topk_prob),
                routed_scaling_factor=float(c.routed_scaling_factor),
            ),
        )
        counts, perm = g.op(
            "moe_expert_permutation",
            [idx],
            2,
            domain=DOMAIN,
            name=f"{p}/moe_expert_permutation",
            **_plugin_attrs(num_experts=E),
        )
        latent = bool(c.moe_latent_size)
        r = self.linear(g, x, f"{p}.fc1_latent_proj", c.mlp_bias) if latent else x
        routed = self.experts(g, r, w, counts, perm, p)  # [n, X] fp32
        routed = self.to_act(g, routed)
        if latent:
            routed = self.linear(g, routed, f"{p}.fc2_latent_proj", c.mlp_bias)
        if c.n_shared_experts:
            routed = g.op1("Add", routed, self.mlp(g, x, f"{p}.shared_experts"))
        return routed

    def experts(self, g: _Graph, r: str, w: str, counts: str, perm: str, p: str) -> str:
        """The routed experts as one expert plugin node over the routing permutation, then the sum over the k
        slots: [n, X] fp32.

        `latent_moe_experts(x, weights, counts, perm, up, down)` takes dense weights stacked over experts
        [E, out, in]: BF16 as stored; FP8 (the fp8 recipe) dequantized in the graph (per-expert scale,
        `DequantizeLinear` axis 0) to the activation dtype. `latent_moe_experts_nvfp4(x, weights, counts, perm,
        up, up_scale, up_scale_2, down, down_scale, down_scale_2)` takes NVFP4 as stored: packed E2M1 [E, out,
        in/2] and E4M3 block scales [E, out, in/16] as INT8 tensors holding the same bits (what the TensorRT
        plugin takes, as Edge-LLM's MoE plugins do), FP32 global scales [E]. Both return the weighted per-slot
        outputs [n, k, X] fp32 (plugins/latent_moe_experts/reference.py)."""
        onnx = _onnx()
        c = self.cfg
        E, X, inter = c.n_routed_experts, c.expert_dim, c.moe_intermediate_size
        fmt = self.r.st_dtype(f"{p}.experts.0.up_proj.weight")
        if fmt not in ("U8", "F8_E4M3", "BF16", "F16", "F32"):
            raise BuildError(
                f"routed experts of {p} are stored as {fmt}; the export takes NVFP4, FP8 or BF16"
            )
        i8 = onnx.TensorProto.INT8
        weights: list[str] = []
        for proj, (o, i_) in (("up_proj", (inter, X)), ("down_proj", (X, inter))):
            names = [f"{p}.experts.{e}.{proj}" for e in range(E)]
            key = f"{p}.experts.{proj}"

            def stack(
                suffix: str, data_type: int, dims: list[int], n: list[str] = names
            ) -> Callable[[], Any]:
                return lambda: (data_type, dims, b"".join(self._bytes(f"{m}.{suffix}") for m in n))

            def scales(suffix: str, n: list[str] = names) -> Callable[[], Any]:
                return lambda: (
                    onnx.TensorProto.FLOAT,
                    [E],
                    b"".join(self._scalar(f"{m}.{suffix}")[2] for m in n),
                )

            if fmt == "U8":
                weights += [
                    g.tensor(f"{key}.weight", stack("weight", i8, [E, o, i_ // 2])),
                    g.tensor(f"{key}.weight_scale", stack("weight_scale", i8, [E, o, i_ // 16])),
                    g.tensor(f"{key}.weight_scale_2", scales("weight_scale_2")),
                ]
            elif fmt == "F8_E4M3":
                w8 = g.tensor(f"{key}.weight", stack("weight", onnx.TensorProto.FLOAT8E4M3FN, [E, o, i_]))
                dq = g.op1(
                    "DequantizeLinear",
                    w8,
                    g.tensor(f"{key}.weight_scale", scales("weight_scale")),
                    axis=0,
                    name=f"{key}/weight_dq",
                )
                weights.append(self.to_act(g, dq))
            else:
                weights.append(
                    g.tensor(
                        f"{key}.weight",
                        stack("weight", getattr(onnx.TensorProto, _ST_TO_ONNX[fmt]), [E, o, i_]),
                    )
                )
        op_type = "latent_moe_experts_nvfp4" if fmt == "U8" else "latent_moe_experts"
        per_slot = g.op1(
            op_type, r, w, counts, perm, *weights, domain=DOMAIN, name=f"{p}/{op_type}", **_plugin_attrs()
        )
        return g.op1("ReduceSum", per_slot, g.const([1]), keepdims=0, name=f"{p}/expert_sum")

    # ---- graphs ----
    def _common_shapes(self, g: _Graph, prefix: str) -> tuple[dict[str, str], str]:
        """Shape tensors and index tensors every layer of a graph shares (built once per graph)."""
        onnx = _onnx()
        c = self.cfg
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        grp = nh // nkv
        bt = g.op1("Shape", "input_ids")  # [batch, T] as int64 [2]
        batch = g.op1("Slice", bt, g.const([0]), g.const([1]))
        T = g.op1("Slice", bt, g.const([1]), g.const([2]))
        cat = lambda *xs: g.op1("Concat", *xs, axis=0)  # noqa: E731
        shp = {
            "btc": cat(bt, g.const([-1])),
            "q": cat(bt, g.const([nh, hd])),
            "kv": cat(bt, g.const([nkv, hd])),
            "qg": cat(batch, g.const([nkv, -1, hd])),
            "o5": cat(batch, g.const([nkv, grp]), T, g.const([hd])),
        }
        if "*" not in self._pattern(prefix):
            return shp, bt
        # positions of the new tokens [batch, T] and the attention mask over the pool row [batch, 1, 1, T, S]
        past = g.op1("Cast", "past_lengths", to=onnx.TensorProto.INT64)
        steps = g.op1("Range", g.const(0), g.op1("Squeeze", T, g.const([0])), g.const(1))  # [T]
        pos = g.op1("Add", g.op1("Unsqueeze", past, g.const([1])), g.op1("Unsqueeze", steps, g.const([0])))
        first = next(i for i, ch in enumerate(self._pattern(prefix)) if ch == "*")
        S = g.op1("Gather", g.op1("Shape", f"{prefix}kv_cache_{first}"), g.const(3), axis=0)
        key_pos = g.op1("Range", g.const(0), S, g.const(1))  # [S]
        allowed = g.op1(
            "LessOrEqual", g.op1("Unsqueeze", key_pos, g.const([0, 1])), g.op1("Unsqueeze", pos, g.const([2]))
        )  # [batch, T, S]
        neg = g.op1("Where", allowed, g.const(0.0, "float32"), g.const(float("-inf"), "float32"))
        shp["mask"] = g.op1("Unsqueeze", neg, g.const([1, 2]))
        shp["scores5"] = cat(batch, g.const([nkv, grp]), T, g.const([-1]))
        shp["scores4"] = cat(batch, g.const([nkv, -1]), g.op1("Unsqueeze", S, g.const([0])))
        # ScatterND indices [batch, 2, nkv, T, 4] = (slot, k|v, kv head, position)
        full = cat(batch, g.const([2, nkv]), T, g.const([1]))
        slot = g.op1(
            "Reshape", g.op1("Cast", "slot_idx", to=onnx.TensorProto.INT64), g.const([-1, 1, 1, 1, 1])
        )
        kvsel = g.const([[[[[0]]], [[[1]]]]])  # [1, 2, 1, 1, 1]
        heads = g.const([[[[[h]] for h in range(nkv)]]])  # [1, 1, nkv, 1, 1]
        posr = g.op1("Unsqueeze", pos, g.const([1, 2, 4]))  # [batch, 1, 1, T, 1]
        parts = [g.op1("Expand", t, full) for t in (slot, kvsel, heads, posr)]
        shp["kv_index"] = g.op1("Concat", *parts, axis=-1)
        shp["pos"], shp["key_pos"] = pos, key_pos
        return shp, bt

    def _pattern(self, prefix: str) -> str:
        return self.cfg.mtp_pattern if prefix else self.cfg.pattern

    def _common_inputs(self, g: _Graph) -> None:
        g.add_input("input_ids", "int32", ["batch", "tokens"], "input_ids")
        g.add_input("past_lengths", "int32", ["batch"], "past_lengths")
        g.add_input("slot_idx", "int32", ["batch"], "slot_idx")

    def _layer(self, g: _Graph, h: str, ch: str, p: str, i: int, prefix: str, shp: dict[str, str]) -> str:
        x = self.rms_norm(g, h, f"{p}.norm.weight")
        mp = f"{p}.mixer"
        if ch == "M":
            y = self.mamba(g, x, mp, i, shp["btc"])
        elif ch == "*":
            y = self.attention(g, x, mp, i, prefix, shp)
        elif ch == "E":
            y = self.moe(g, x, mp)
        elif ch == "-":
            y = self.mlp(g, x, mp)
        else:
            raise BuildError(f"layer char {ch!r} has no ONNX export")
        return g.op1("Add", h, y, name=f"{p}/residual")

    def _head(self, g: _Graph, hn: str, bt: str, hidden_out: str) -> None:
        onnx = _onnx()
        c = self.cfg
        head = "backbone.embeddings.weight" if c.tie_word_embeddings else "lm_head.weight"
        logits = g.op1("Gemm", hn, self.weight(g, head), transB=1, name="lm_head")
        logits = logits if self.dtype == "float32" else g.op1("Cast", logits, to=onnx.TensorProto.FLOAT)
        g.op("Reshape", [logits, g.op1("Concat", bt, g.const([-1]), axis=0)], outs=["logits"], name="logits")
        g.op("Reshape", [hn, g.op1("Concat", bt, g.const([-1]), axis=0)], outs=[hidden_out], name=hidden_out)
        g.add_output("logits", "float32", ["batch", "tokens", c.vocab_size], "logits")
        g.add_output(hidden_out, self.dtype, ["batch", "tokens", c.hidden_size], "hidden_states")

    def _embed(self, g: _Graph) -> str:
        e = g.op1(
            "Gather", self.weight(g, "backbone.embeddings.weight"), "input_ids", axis=0
        )  # [batch, T, D]
        return g.op1("Reshape", e, g.const([-1, self.cfg.hidden_size]))

    def backbone(self) -> _Graph:
        g = _Graph("nemotron_h", self.data_model, self.shared)
        self._common_inputs(g)
        shp, bt = self._common_shapes(g, "")
        h = self._embed(g)
        for i, ch in enumerate(self._bar(self.cfg.pattern, "backbone")):
            h = self._layer(g, h, ch, f"backbone.layers.{i}", i, "", shp)
        self._head(g, self.rms_norm(g, h, "backbone.norm_f.weight"), bt, "hidden_states")
        return g

    def mtp(self) -> _Graph:
        """The MTP block, depth 0 (spec §4.7): (final-normed h_t, x_{t+1}) -> (logits for x_{t+2}, g)."""
        c = self.cfg
        g = _Graph("nemotron_h_mtp", self.data_mtp, self.shared)
        self._common_inputs(g)
        g.add_input("hidden_states", self.dtype, ["batch", "tokens", c.hidden_size], "hidden_states")
        shp, bt = self._common_shapes(g, "mtp_")
        e = self._embed(g)
        hid = g.op1("Reshape", "hidden_states", g.const([-1, c.hidden_size]))
        cat = g.op1(
            "Concat",
            self.rms_norm(g, e, "mtp.layers.0.enorm.weight"),
            self.rms_norm(g, hid, "mtp.layers.0.hnorm.weight"),
            axis=-1,
        )
        u = self.linear(g, cat, "mtp.layers.0.eh_proj")
        n = len(c.mtp_pattern)
        for j, ch in enumerate(c.mtp_pattern):
            u = self._layer(g, u, ch, f"mtp.layers.{j}", j, "mtp_", shp)
        self._head(
            g, self.rms_norm(g, u, f"mtp.layers.{n - 1}.final_layernorm.weight"), bt, "mtp_hidden_states"
        )
        return g

    def _bar(self, it: str, desc: str) -> Any:
        from tqdm import tqdm

        return tqdm(it, desc=f"onnx {desc}", unit="layer", file=sys.stderr, disable=not self.progress)

    def run(self) -> dict[str, Any]:
        onnx = _onnx()
        c = self.cfg
        if set(c.mtp_pattern) & {"M"} and c.num_nextn_predict_layers:
            raise BuildError(f"MTP pattern {c.mtp_pattern!r} has Mamba layers; the MTP graph supports * E -")
        self.data_model = _DataFile(self.out / f"{MODEL_FILE}.data")
        self.data_mtp = _DataFile(self.out / f"{MTP_FILE}.data")
        graphs: dict[str, _Graph] = {}
        try:
            graphs["model"] = self.backbone()
            if c.num_nextn_predict_layers:
                graphs["mtp"] = self.mtp()
        finally:
            self.data_model.close()
            self.data_mtp.close()
        files = {"model": MODEL_FILE, "mtp": MTP_FILE}
        io: dict[str, Any] = {
            "format": IO_FORMAT,
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "domain": DOMAIN,
            "dtype": self.dtype,
            "model_type": "nemotron_h",
            "config": {
                "pattern": c.pattern,
                "mtp_pattern": c.mtp_pattern,
                "vocab_size": c.vocab_size,
                "hidden_size": c.hidden_size,
            },
            "dims": {
                "batch": "sequences in this call",
                "tokens": "new tokens per sequence (prefill chunk or 1 + drafts)",
                "pool": "state rows the runtime allocated (slot_idx indexes them)",
                "max_seq_len": "KV positions per pool row",
            },
            "graphs": {},
        }
        for key, g in graphs.items():
            m = g.model()
            onnx.save_model(m, str(self.out / files[key]))
            ops: dict[str, int] = {}
            for n in m.graph.node:
                if n.domain == DOMAIN:
                    ops[n.op_type] = ops.get(n.op_type, 0) + 1
            self.counts[key] = ops
            io["graphs"][key] = {"file": files[key], "nodes": len(m.graph.node), "plugin_nodes": ops, **g.io}
        if not (self.out / f"{MTP_FILE}.data").stat().st_size:
            (self.out / f"{MTP_FILE}.data").unlink()
        (self.out / IO_FILE).write_text(json.dumps(io, indent=1) + "\n")
        return io


def _plugin_attrs(**attrs: int | float) -> dict[str, Any]:
    """A plugin node's attributes: the QDP's own (INT / FLOAT, int32-safe), `plugin_namespace` and `aot=1`."""
    for k, v in attrs.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BuildError(f"plugin attribute {k}={v!r} must be an int or a float")
        if isinstance(v, int) and not -(2**31) <= v < 2**31:
            raise BuildError(
                f"plugin attribute {k}={v} does not fit int32 (TensorRT's parser reads INT as int32)"
            )
    return {**attrs, "plugin_namespace": DOMAIN, "aot": 1}


def export_onnx(
    checkpoint: str | Path, out_dir: str | Path, *, dtype: str = "float32", progress: bool = False
) -> dict[str, Any]:
    """Export `checkpoint` (HF / ModelOpt-format dir, or an engine dir's checkpoint/) to `out_dir` (see the
    module docstring). Written to a temp dir beside `out_dir`, then renamed. Returns the io.json content."""
    from trtllm_nemotron.checkpoint import open_checkpoint

    if dtype not in DTYPES:
        raise BuildError(f"ONNX activation dtype must be one of {DTYPES}, got {dtype!r}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with open_checkpoint(Path(checkpoint)) as reader:
            io = _Exporter(reader, tmp, dtype, progress).run()
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return io


class _ModuleReader:
    """The reader interface the exporter uses (`config`, `st_dtype`, `shape`, `get`) over a loaded
    `NemotronHForCausalLM`'s parameters and buffers (canonical checkpoint names): its weights as they are in
    memory (dequantized at load when the checkpoint was quantized)."""

    _ST = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}

    def __init__(self, model: Any) -> None:
        self.config = model.config
        self.tensors = {k: v.detach() for k, v in model.state_dict().items()}

    def st_dtype(self, name: str) -> str:
        return self._ST[str(self.tensors[name].dtype).removeprefix("torch.")]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def get(self, name: str) -> Any:
        return self.tensors[name].cpu()


def export_model_onnx(model: Any, out_dir: str | Path, *, dtype: str = "float32") -> dict[str, Any]:
    """Export a loaded `NemotronHForCausalLM` (its in-memory weights, float32 / bfloat16) like `export_onnx`;
    a model built with `clamp_dt_min=True` gets the dt clamp in its graph ("prefill_only" has no graph form:
    one graph serves prefill and decode)."""
    clamp = getattr(model, "clamp_dt_min", False)
    if clamp not in (False, True):
        raise BuildError(
            f"clamp_dt_min={clamp!r}: one graph serves prefill and decode; export with False or True"
        )
    if dtype not in DTYPES:
        raise BuildError(f"ONNX activation dtype must be one of {DTYPES}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dt_min = model.config.time_step_min if clamp else None
    return _Exporter(_ModuleReader(model), out, dtype, False, dt_min=dt_min).run()


_F = ("float", "bfloat16", "float16")  # activation / weight dtypes a plugin input may take
_F32, _I32, _I8 = ("float",), ("int32",), ("int8",)
# Each plugin node as an ONNX operator schema of domain `trtllm_nemotron`: inputs and outputs (name, dtypes) in the
# QDP's order (plugins/<op>/trt.py) and its attributes; `register_schemas()` makes `onnx.checker` check every
# plugin node against it (input / output counts and dtypes, attribute names and types).
PLUGIN_SCHEMAS: dict[
    str, tuple[list[tuple[str, tuple[str, ...]]], list[tuple[str, tuple[str, ...]]], dict[str, str]]
] = {
    "mamba_state_update": (
        [
            ("xbc", _F),
            ("dt", _F),
            ("conv_weight", _F),
            ("conv_bias", _F),
            ("dt_bias", _F32),
            ("A", _F32),
            ("D", _F32),
            ("slot_idx", _I32),
            ("conv_state", _F),
            ("ssm_state", ("float", "float16")),
            ("conv_window", _F),
        ],
        [
            ("y", _F32),
            ("conv_state_out", _F),
            ("ssm_state_out", ("float", "float16")),
            ("ssm_steps", _F),
            ("conv_steps", _F),
        ],
        {
            "num_heads": "INT",
            "n_groups": "INT",
            "head_dim": "INT",
            "state_size": "INT",
            "conv_kernel": "INT",
            "keep_steps": "INT",
        },
    ),
    "latent_moe_routing": (
        [("logits", _F32), ("bias", _F32)],
        [("weights", _F32), ("idx", _I32)],
        {
            "num_experts": "INT",
            "top_k": "INT",
            "n_group": "INT",
            "topk_group": "INT",
            "norm_topk_prob": "INT",
            "routed_scaling_factor": "FLOAT",
        },
    ),
    "moe_expert_permutation": ([("idx", _I32)], [("counts", _I32), ("perm", _I32)], {"num_experts": "INT"}),
    "latent_moe_experts": (
        [("x", _F), ("weights", _F32), ("counts", _I32), ("perm", _I32), ("up", _F), ("down", _F)],
        [("out", _F32)],
        {},
    ),
    "latent_moe_experts_nvfp4": (
        [
            ("x", _F),
            ("weights", _F32),
            ("counts", _I32),
            ("perm", _I32),
            ("up", _I8),
            ("up_scale", _I8),
            ("up_scale_2", _F32),
            ("down", _I8),
            ("down_scale", _I8),
            ("down_scale_2", _F32),
        ],
        [("out", _F32)],
        {},
    ),
}
_REGISTERED: list[str] = []


def register_schemas() -> None:
    """Register `PLUGIN_SCHEMAS` with onnx (once per process), as Edge-LLM registers its custom ops' schemas."""
    onnx = _onnx()
    from onnx.defs import OpSchema

    for op, (ins, outs, attrs) in PLUGIN_SCHEMAS.items():
        if op in _REGISTERED or onnx.defs.has(op, DOMAIN):
            continue
        params, constraints = [], []
        for kind, entries in (("i", ins), ("o", outs)):
            plist = []
            for j, (name, types) in enumerate(entries):
                tv = f"T{kind}{j}"
                plist.append(OpSchema.FormalParameter(name, tv))
                constraints.append((tv, [f"tensor({t})" for t in types], f"{name} dtypes"))
            params.append(plist)
        attributes = [OpSchema.Attribute(n, getattr(OpSchema.AttrType, t), n) for n, t in attrs.items()]
        attributes += [
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
            OpSchema.Attribute("aot", OpSchema.AttrType.INT, "1: TensorRT's AOT implementation"),
        ]
        schema = OpSchema(
            op,
            DOMAIN,
            1,
            inputs=params[0],
            outputs=params[1],
            type_constraints=constraints,
            attributes=attributes,
            doc=f"TensorRT plugin {DOMAIN}::{op}",
        )
        onnx.defs.register_schema(schema)
        _REGISTERED.append(op)


def check_onnx(onnx_dir: str | Path) -> dict[str, dict[str, int]]:
    """`onnx.checker` full check (types and shape inference, strict; the plugin nodes against
    `PLUGIN_SCHEMAS`) of every graph in `onnx_dir`; returns each graph's plugin-node counts. Raises BuildError
    naming the graph and the checker's message."""
    onnx = _onnx()
    register_schemas()
    d = Path(onnx_dir)
    io = json.loads((d / IO_FILE).read_text())
    counts = {}
    for key, g in io["graphs"].items():
        try:
            onnx.checker.check_model(str(d / g["file"]), full_check=True)
        except onnx.checker.ValidationError as e:
            raise BuildError(f"{d / g['file']} fails the ONNX checker: {e}") from e
        counts[key] = g["plugin_nodes"]
    return counts
