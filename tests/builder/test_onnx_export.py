"""The ONNX export of make-tiny checkpoints for every recipe (`build --onnx`, cpu target: float32 activations):
the full checker, the plugin-node contract, the weight formats in the graph, io.json, the planner's size
estimate, and greedy decoding through the graphs against the native step."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import onnx
import pytest

from builder.manifest import read_manifest, verify_engine_dir
from builder.onnx_export import DOMAIN, OPSET, PLUGIN_SCHEMAS, check_onnx
from builder.pipeline import build_engine
from builder.plan import onnx_bytes
from trtllm_nemotron.errors import BuildError

RECIPES = ("bf16", "fp8", "nvfp4", "nvfp4-super")
FAST = dict(progress=False, calib_samples=2, calib_seq_len=32)
PLUGINS_DIR = Path(__file__).parents[2] / "plugins"


@pytest.fixture(scope="module", params=RECIPES)
def engine(request, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"onnx-{request.param}") / "engine"
    return build_engine(tiny_ckpt, out, target="cpu", recipe=request.param, mtp=3, onnx=True, **FAST)


def _load(engine: Path, name: str) -> onnx.ModelProto:
    return onnx.load(str(engine / "onnx" / name), load_external_data=False)


def _layer_of(node: onnx.NodeProto) -> str:
    return node.name.split("/")[0].rsplit(".mixer", 1)[0]


def test_build_onnx_writes_a_checked_network(engine):
    assert verify_engine_dir(engine) == []
    m = read_manifest(engine)
    assert {"model.onnx", "model.onnx.data", "mtp.onnx", "io.json"} <= {
        p.name for p in (engine / "onnx").iterdir()
    }
    assert m["onnx"]["checker"] == "full_check passed" and m["onnx"]["opset"] == OPSET
    assert check_onnx(engine / "onnx") == m["onnx"]["plugin_nodes"]  # onnx.checker full_check, again
    cfg = json.loads((engine / "checkpoint" / "config.json").read_text())
    pattern = cfg["hybrid_override_pattern"]
    model = _load(engine, "model.onnx")
    assert {o.domain: o.version for o in model.opset_import} == {"": OPSET, DOMAIN: 1}
    plugin = [n for n in model.graph.node if n.domain == DOMAIN]
    per_layer: dict[str, list[str]] = {}
    for n in plugin:
        per_layer.setdefault(_layer_of(n), []).append(n.op_type)
    experts = (
        "latent_moe_experts_nvfp4"
        if read_manifest(engine)["recipe"]["name"].startswith("nvfp4")
        else ("latent_moe_experts")
    )
    for i, ch in enumerate(pattern):
        want = {"M": ["mamba_state_update"], "E": ["latent_moe_routing", "moe_expert_permutation", experts]}
        assert sorted(per_layer.pop(f"backbone.layers.{i}", [])) == sorted(want.get(ch, [])), (i, ch)
    assert per_layer == {}
    mtp = _load(engine, "mtp.onnx")
    mtp_plugins = sorted(n.op_type for n in mtp.graph.node if n.domain == DOMAIN)
    assert mtp_plugins == sorted(
        ["latent_moe_routing", "moe_expert_permutation", "latent_moe_experts"]
    )  # BF16 MTP


def test_plugin_nodes_follow_the_tensorrt_parser_contract(engine):
    """op_type = QDP name, domain = plugin_namespace, aot=1, only INT / FLOAT QDP attributes (int32-safe); the
    schema the checker holds each node to (PLUGIN_SCHEMAS) has the inputs, in order, and the attributes of the
    QDP registered under that name in plugins/*/trt.py."""
    qdps = _registered_qdps()
    for op, (ins, _, attrs) in PLUGIN_SCHEMAS.items():
        assert op in qdps, f"no QDP registered as {DOMAIN}::{op} in plugins/*/trt.py"
        assert [n for n, _ in ins] == qdps[op][0], (op, "inputs")
        assert sorted(attrs) == sorted(qdps[op][1]), (op, "attributes")
    for graph in ("model.onnx", "mtp.onnx"):
        for n in (n for n in _load(engine, graph).graph.node if n.domain == DOMAIN):
            attrs = {a.name: a for a in n.attribute}
            assert attrs.pop("plugin_namespace").s.decode() == DOMAIN
            assert attrs.pop("aot").i == 1
            assert all(a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT) for a in attrs.values())
            assert all(-(2**31) <= a.i < 2**31 for a in attrs.values())
            ins, outs, schema_attrs = PLUGIN_SCHEMAS[n.op_type]
            assert (len(n.input), len(n.output)) == (len(ins), len(outs)) and sorted(attrs) == sorted(
                schema_attrs
            )


def test_the_checker_holds_plugin_nodes_to_their_schema(engine, tmp_path):
    import shutil

    d = tmp_path / "onnx"
    shutil.copytree(engine / "onnx", d)
    m = onnx.load(str(d / "model.onnx"), load_external_data=False)
    node = next(n for n in m.graph.node if n.op_type == "moe_expert_permutation")
    node.attribute.append(onnx.helper.make_attribute("num_expert", 16))  # a misspelt attribute
    onnx.save(m, str(d / "model.onnx"))
    with pytest.raises(
        BuildError, match="model.onnx fails the ONNX checker: Unrecognized attribute: num_expert"
    ):
        check_onnx(d)
    node.attribute.pop()
    node.input.append(node.input[0])  # one input too many
    onnx.save(m, str(d / "model.onnx"))
    with pytest.raises(BuildError, match="fails the ONNX checker"):
        check_onnx(d)


def _registered_qdps() -> dict[str, tuple[list[str], list[str]]]:
    """{QDP name: (tensor parameters, attribute parameters)} of every `@trtp.register` in plugins/*/trt.py,
    read from the source (no tensorrt here): TensorDesc-annotated parameters first, then the attributes."""
    out = {}
    names = {}
    for path in PLUGINS_DIR.glob("*/trt.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # module constants such as PLUGIN = "trtllm_nemotron::mamba_state_update"
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        names[t.id] = node.value.value
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for dec in fn.decorator_list:
                if isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("register"):
                    arg = dec.args[0]
                    qdp = arg.value if isinstance(arg, ast.Constant) else names.get(ast.unparse(arg), "")
                    ns, _, op = qdp.partition("::")
                    assert ns == DOMAIN, (path, qdp)
                    params = fn.args.args
                    tensors = [
                        a.arg for a in params if a.annotation and "TensorDesc" in ast.unparse(a.annotation)
                    ]
                    attrs = [a.arg for a in params if a.arg not in tensors]
                    out[op] = (tensors, attrs)
    return out


def test_weights_are_stored_in_their_formats(engine):
    recipe = read_manifest(engine)["recipe"]["name"]
    model = _load(engine, "model.onnx")
    inits = {t.name: t for t in model.graph.initializer}
    fp4 = [t for t in inits.values() if t.data_type == onnx.TensorProto.FLOAT4E2M1]
    fp8 = [t for t in inits.values() if t.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    assert bool(fp4) == (recipe == "nvfp4") and bool(fp8) == (recipe != "bf16")
    for t in fp4:  # logical [out, in], through the two-level blocked DequantizeLinear
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == t.name)
        assert {a.name: a.i for a in dq.attribute} == {"axis": -1, "block_size": 16}
        scale_dq = next(n for n in model.graph.node if n.output[0] == dq.input[1])
        assert scale_dq.op_type == "DequantizeLinear"
        assert inits[scale_dq.input[0]].data_type == onnx.TensorProto.FLOAT8E4M3FN
        assert (
            inits[scale_dq.input[1]].data_type == onnx.TensorProto.FLOAT
            and list(inits[scale_dq.input[1]].dims) == []
        )
        assert list(inits[scale_dq.input[0]].dims) == [t.dims[0], t.dims[1] // 16]
    if recipe.startswith("nvfp4"):  # NVFP4 experts reach their plugin as stored: packed bits as INT8
        node = next(n for n in model.graph.node if n.op_type == "latent_moe_experts_nvfp4")
        assert [inits[x].data_type for x in node.input[4:]] == [
            onnx.TensorProto.INT8,
            onnx.TensorProto.INT8,
            onnx.TensorProto.FLOAT,
        ] * 2
    # the planner's estimate is exactly the exported tensor bytes (MTP tensors shared with the backbone once)
    cfg = json.loads((engine / "checkpoint" / "config.json").read_text())
    from trtllm_nemotron.config import NemotronHConfig

    assert _exported_bytes(engine / "onnx") == onnx_bytes(NemotronHConfig.from_dict(cfg), recipe)


def _exported_bytes(d: Path) -> int:
    total = 0
    for f in ("model.onnx", "mtp.onnx"):
        for t in onnx.load(str(d / f), load_external_data=False).graph.initializer:
            ext = {e.key: e.value for e in t.external_data}
            if ext:
                total += int(ext["length"]) if ext["location"] == f"{f}.data" else 0
            elif not t.name.startswith("const_"):
                total += len(t.raw_data)
    return total


def test_io_json_describes_every_input_and_output(engine):
    io = json.loads((engine / "onnx" / "io.json").read_text())
    for key, f in (("model", "model.onnx"), ("mtp", "mtp.onnx")):
        g = _load(engine, f).graph
        meta = io["graphs"][key]
        assert [e["name"] for e in meta["inputs"]] == [i.name for i in g.input]
        assert [e["name"] for e in meta["outputs"]] == [o.name for o in g.output]
        roles = {e["role"] for e in meta["inputs"]}
        assert {"input_ids", "past_lengths", "slot_idx", "kv_cache"} <= roles
        for e in meta["inputs"]:
            if e["role"] in ("kv_cache", "conv_state", "ssm_state"):
                assert e["shape"][0] == "pool" and isinstance(e["layer"], int)
                out = next(o for o in meta["outputs"] if o["name"] == f"present_{e['name']}")
                assert (
                    out["shape"] == e["shape"] and out["dtype"] == e["dtype"] and out["layer"] == e["layer"]
                )
    assert {e["role"] for e in io["graphs"]["model"]["inputs"]} >= {"conv_state", "ssm_state"}
    assert {e["role"] for e in io["graphs"]["model"]["outputs"]} >= {"logits", "hidden_states"}


def test_greedy_through_the_graphs_equals_the_native_step(engine):
    from trtllm_nemotron.runtime import Engine, SamplingParams
    from trtllm_nemotron.runtime.onnx_backend import OnnxNetwork, greedy_generate

    prompt = [5, 17, 300, 42, 7, 99]
    native = Engine.load(engine, mtp=0, max_batch_size=1, max_seq_len=64, backend="native")
    want = native.generate(prompt, SamplingParams(max_tokens=6, ignore_eos=True)).token_ids
    net = OnnxNetwork(engine / "onnx", pool=2, max_seq_len=64)
    assert greedy_generate(net, prompt, 6) == want
    if read_manifest(engine)["recipe"]["name"] == "nvfp4":  # MTP (draft, verify, roll back) on an FP4 graph
        assert greedy_generate(net, prompt, 6, mtp=3, slot=1) == want


def test_build_trt_says_why_it_was_skipped(tiny_ckpt, tmp_path):
    out = build_engine(
        tiny_ckpt, tmp_path / "e", target="b200", recipe="bf16", mtp=1, trt=True, validate=True, **FAST
    )
    m = read_manifest(out)
    trt = next(s for s in m["stages"] if s["name"] == "trt")
    try:
        import tensorrt  # noqa: F401
    except Exception:
        assert trt["status"] == "skipped" and "tensorrt does not import here" in trt["detail"]
        assert m["tensorrt_engine"] is None
        assert m["validation"]["tensorrt"]["status"] == "skipped"
        assert "no TensorRT engine: tensorrt does not import" in m["validation"]["tensorrt"]["reason"]
    assert m["onnx"]["dtype"] == "bfloat16"  # --trt implies --onnx; GPU targets export bf16 activations
    assert m["kernel_versions"]["triton"] and m["kernel_versions"]["ptx"]
    cpu = build_engine(tiny_ckpt, tmp_path / "c", target="cpu", recipe="bf16", mtp=1, trt=True, **FAST)
    assert "cpu target" in next(s for s in read_manifest(cpu)["stages"] if s["name"] == "trt")["detail"]


def test_export_refuses_bad_input(tiny_ckpt, tmp_path):
    from builder.onnx_export import export_onnx

    with pytest.raises(BuildError, match="dtype must be one of"):
        export_onnx(tiny_ckpt, tmp_path / "o", dtype="float16")
    assert not (tmp_path / "o").exists()


def test_trt_profiles_cover_every_graph_input(engine):
    """The two optimisation profiles the trt stage gives TensorRT: every input of both graphs gets a complete
    min <= opt <= max shape, the state pools one fixed shape, context = one sequence of up to a prefill chunk,
    generation = up to max_batch sequences of 1 + MTP tokens."""
    from builder.trt_engine import _profile_shapes, build_profiles

    io = json.loads((engine / "onnx" / "io.json").read_text())
    ctx, gen = build_profiles(max_batch=4, max_tokens=256, mtp=3, pool=5, max_seq_len=64)
    for meta in io["graphs"].values():
        for e in meta["inputs"]:
            for dims in (ctx, gen):
                lo, opt, hi = _profile_shapes(e, dims)
                assert len(lo) == len(e["shape"]) and all(
                    a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)
                )
                if e["role"] in ("kv_cache", "conv_state", "ssm_state"):
                    assert lo == hi and lo[0] == 5
                if e["name"] == "input_ids":
                    assert hi == ([1, 256] if dims is ctx else [4, 4])
