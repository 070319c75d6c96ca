"""TensorRT's own `tensorrt.plugin` package on a CPU host: only the native layer is stood in.

The `tensorrt-cu12-bindings==11.4.0.106` wheel (a test dependency, installed `--no-deps`) carries
`tensorrt_bindings/plugin/*.py`: TensorRT's quickly-deployable-plugin (QDP) front end, pure Python -- the
`@trtp.register` / `@trtp.autotune` / `@trtp.aot_impl` validators, the plugin creator and the AOT plugin
class whose `get_launch_params` calls our `aot_impl`. Its compiled `tensorrt.so` needs libnvinfer, which a
CPU host cannot load. So this module loads that unchanged Python package under the name
`tensorrt.plugin`, over a small stand-in for the compiled module `tensorrt`:

    STOOD IN (native layer only): enums (DataType, TensorFormat, DimensionOperation, PluginFieldType,
    QuickPluginCreationRequest, TensorRTPhase, PluginArgType, PluginArgDataType), empty base classes
    (IPluginV3*, IPluginCreatorV3Quick, ISymExpr, ...), plain containers (Dims, DimsExprs, PluginField,
    PluginFieldCollection, PluginTensorDesc, DynamicPluginTensorDesc), an integer shape-expression builder
    (IExprBuilder / IDimensionExpr: every expression carries its value; a dimension declared dynamic stays
    non-constant, as at build time), and the plugin registry call (a dict).
    NOT stood in: everything in tensorrt/plugin/*.py, which runs as shipped.

`aot_build(...)` then drives a registered plugin through the calls TensorRT's builder makes for an AOT QDP
node (creator.create_plugin with STRICT_AOT, get_output_data_types, get_output_shapes,
get_supported_format_combinations, configure_plugin, get_valid_tactics / set_tactic,
get_launch_params, get_kernel) and returns what would be baked into the engine, evaluated.
"""

from __future__ import annotations

import enum
import importlib.util
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing  # noqa: F401  (tensorrt/plugin/_utils.py uses np.typing; numpy 1.x loads it lazily)


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


class TensorFormat(enum.Enum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2


class DimensionOperation(enum.Enum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


class PluginFieldType(enum.Enum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12
    FP4 = 13


class QuickPluginCreationRequest(enum.Enum):
    UNKNOWN = 0
    PREFER_JIT = 1
    PREFER_AOT = 2
    STRICT_JIT = 3
    STRICT_AOT = 4


class TensorRTPhase(enum.Enum):
    BUILD = 0
    RUNTIME = 1


class PluginArgType(enum.Enum):
    INT = 0


class PluginArgDataType(enum.Enum):
    INT8 = 0
    INT16 = 1
    INT32 = 2


class Dims:
    MAX_DIMS = 8

    def __init__(self, shape: Any = ()) -> None:
        self._d = tuple(int(v) for v in shape) if not isinstance(shape, int) else (0,) * shape

    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, i: int) -> int:
        return self._d[i]

    def __iter__(self):
        return iter(self._d)

    def __repr__(self) -> str:
        return f"Dims{self._d}"


class DimsExprs(list):
    def __init__(self, n: int) -> None:
        super().__init__([None] * n)


class IDimensionExpr:
    """An integer expression that carries its value; `constant` says whether TensorRT would know it at
    build time (a dimension of a dynamic axis is not constant, nor is anything computed from it)."""

    def __init__(self, value: int, constant: bool) -> None:
        self.value, self.constant = int(value), constant

    def is_constant(self) -> bool:
        return self.constant

    def get_constant_value(self) -> int:
        assert self.constant, "TensorRT would not know this value at build time"
        return self.value

    def __repr__(self) -> str:
        return f"Expr({self.value}{'' if self.constant else ', symbolic'})"


_OPS = {
    DimensionOperation.SUM: lambda a, b: a + b,
    DimensionOperation.PROD: lambda a, b: a * b,
    DimensionOperation.MAX: max,
    DimensionOperation.MIN: min,
    DimensionOperation.SUB: lambda a, b: a - b,
    DimensionOperation.EQUAL: lambda a, b: int(a == b),
    DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: lambda a, b: a // b,
    DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class IExprBuilder:
    def constant(self, v: int) -> IDimensionExpr:
        return IDimensionExpr(v, True)

    def operation(self, op: DimensionOperation, a: IDimensionExpr, b: IDimensionExpr) -> IDimensionExpr:
        return IDimensionExpr(_OPS[op](a.value, b.value), a.constant and b.constant)

    def declare_size_tensor(self, *args: Any) -> IDimensionExpr:  # no size tensors in our plugins
        raise AssertionError("size tensors are not used by these plugins")


class PluginField:
    def __init__(self, name: str = "", data: Any = None, type: Any = None) -> None:  # noqa: A002
        self.name, self.data, self.type = name, data, type


class PluginFieldCollection(list):
    pass


@dataclass
class PluginTensorDesc:
    type: Any = None
    format: Any = TensorFormat.LINEAR
    dims: Any = None
    scale: float = 1.0


@dataclass
class DynamicPluginTensorDesc:
    desc: PluginTensorDesc
    min: Any = None
    max: Any = None
    opt: Any = None


class _Registry:
    def __init__(self) -> None:
        self.creators: dict[tuple[str, str, str], Any] = {}

    def register_creator(self, creator: Any, namespace: str) -> bool:
        self.creators[(creator.name, creator.plugin_version, namespace)] = creator
        return True

    def get_creator(self, name: str, version: str, namespace: str = "") -> Any:
        return self.creators.get((name, version, namespace))


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, *args: Any) -> None:
        pass

    def log(self, severity: int, msg: str) -> None:
        pass


def _empty_class(name: str) -> type:
    return type(name, (), {"__init__": lambda self, *a, **k: None})


BASES = (
    "IPluginV3",
    "IPluginV3QuickCore",
    "IPluginV3QuickBuild",
    "IPluginV3QuickRuntime",
    "IPluginV3QuickAOTBuild",
    "IPluginCreatorV3Quick",
    "ISymExpr",
    "ITensor",
    "IPluginResourceContext",
)


def wheel_plugin_dir() -> Path:
    """`tensorrt_bindings/plugin` of the installed tensorrt-cu12-bindings wheel (not imported)."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "tensorrt-cu12-bindings is not installed; `pip install --no-deps tensorrt-cu12-bindings==11.4.0.106` "
            "(a test dependency: pip install -e '.[test]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "plugin"


def make_tensorrt_module() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__path__ = []  # a package, so `import tensorrt.plugin` resolves through sys.modules
    trt.__version__ = "11.4.0.106"
    for e in (
        DataType,
        TensorFormat,
        DimensionOperation,
        PluginFieldType,
        QuickPluginCreationRequest,
        TensorRTPhase,
        PluginArgType,
        PluginArgDataType,
    ):
        setattr(trt, e.__name__, e)
    for cls in (
        Dims,
        DimsExprs,
        IDimensionExpr,
        IExprBuilder,
        PluginField,
        PluginFieldCollection,
        PluginTensorDesc,
        DynamicPluginTensorDesc,
        Logger,
    ):
        setattr(trt, cls.__name__, cls)
    for name in BASES:
        setattr(trt, name, _empty_class(name))
    aliases = {
        "float32": DataType.FLOAT,
        "float16": DataType.HALF,
        "bfloat16": DataType.BF16,
        "int8": DataType.INT8,
        "int32": DataType.INT32,
        "int64": DataType.INT64,
        "bool": DataType.BOOL,
        "uint8": DataType.UINT8,
        "fp8": DataType.FP8,
        "int4": DataType.INT4,
        "fp4": DataType.FP4,
    }
    for k, v in aliases.items():
        setattr(trt, k, v)
    np_types = {
        DataType.FLOAT: np.float32,
        DataType.HALF: np.float16,
        DataType.INT8: np.int8,
        DataType.INT32: np.int32,
        DataType.INT64: np.int64,
        DataType.BOOL: np.bool_,
        DataType.UINT8: np.uint8,
    }
    trt.nptype = lambda t: np_types[t]
    registry = _Registry()
    trt.get_plugin_registry = lambda: registry
    return trt


class StandIn:
    """Context manager: `tensorrt` = the stand-in, `tensorrt.plugin` = the wheel's package, loaded fresh
    (its registry empty); on exit, sys.modules is restored and the modules that imported them forgotten."""

    FORGET = ("tensorrt", "plugins.trt", "plugins._trt_common")

    def __enter__(self) -> StandIn:
        self._saved = {k: v for k, v in sys.modules.items() if self._ours(k)}
        for k in self._saved:
            del sys.modules[k]
        trt = make_tensorrt_module()
        sys.modules["tensorrt"] = trt
        pdir = wheel_plugin_dir()
        spec = importlib.util.spec_from_file_location(
            "tensorrt.plugin", pdir / "__init__.py", submodule_search_locations=[str(pdir)]
        )
        assert spec is not None and spec.loader is not None
        trtp = importlib.util.module_from_spec(spec)
        sys.modules["tensorrt.plugin"] = trtp
        trt.plugin = trtp
        spec.loader.exec_module(trtp)
        self.trt, self.trtp = trt, trtp
        return self

    def _ours(self, name: str) -> bool:
        return (
            name == "tensorrt"
            or name.startswith("tensorrt.")
            or name in self.FORGET
            or (name.startswith("plugins.") and name.endswith(".trt"))
        )

    def __exit__(self, *exc: Any) -> None:
        for k in [k for k in sys.modules if self._ours(k)]:
            del sys.modules[k]
        sys.modules.update(self._saved)


# ----------------------------------------------------------------------------------------------------
# The builder's side of an AOT plugin node


@dataclass
class Tensor:
    """One plugin input: dtype (stand-in DataType), concrete shape, and which axes are dynamic."""

    dtype: Any
    shape: tuple[int, ...]
    dynamic: tuple[int, ...] = ()


class _LaunchParams:
    grid_x = grid_y = grid_z = block_x = block_y = block_z = shared_mem = None


class _SymExprSetter:
    def __init__(self) -> None:
        self.nbSymExprs = 0
        self.exprs: dict[int, Any] = {}

    def __setitem__(self, i: int, v: Any) -> None:
        self.exprs[i] = v


@dataclass
class AotResult:
    kernel_name: str
    ptx: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    extra_args: tuple[int, ...]  # evaluated int32 scalar arguments
    output_shapes: list[tuple[int, ...]]
    output_types: list[Any]
    aliased: dict[int, int]
    combinations: list[tuple[Any, ...]]


def _value(x: Any) -> int:
    """An evaluated launch parameter (SymExprImpl -> IDimensionExpr, or an IDimensionExpr, or an int)."""
    if hasattr(x, "expr"):
        x = x.expr
    return x.value if isinstance(x, IDimensionExpr) else int(x)


def node_fields(creator: Any, attrs: dict[str, Any]) -> PluginFieldCollection:
    """The plugin fields TensorRT's ONNX parser hands the creator: one per field name the creator declares,
    in its order, from an ONNX INT attribute (int32, one element) or FLOAT attribute (float32)."""
    fields = PluginFieldCollection()
    for f in creator.field_names:
        if f.name not in attrs:
            raise AssertionError(
                f"node lacks attribute {f.name}: the AOT call would shift every later argument"
            )
        v = attrs[f.name]
        if isinstance(v, float):
            fields.append(PluginField(f.name, np.array([v], dtype=np.float32), PluginFieldType.FLOAT32))
        else:
            assert int(v) == np.int32(v), f"{f.name}={v} does not fit the int32 ONNX attribute"
            fields.append(PluginField(f.name, np.array([int(v)], dtype=np.int32), PluginFieldType.INT32))
    extra = set(attrs) - {f.name for f in creator.field_names}
    assert not extra, f"attributes {extra} are not fields of the plugin"
    return fields


def aot_build(
    st: StandIn, plugin_id: str, inputs: list[Tensor], attrs: dict[str, Any], want_types: list[Any]
):
    """Drive plugin `ns::name` through TensorRT's build-time calls for an AOT node; returns AotResult.

    `want_types` is the type of every input and output of the combination the network uses (it must be
    one the plugin offers, as TensorRT's format selection requires)."""
    ns, name = plugin_id.split("::")
    trt = st.trt
    creator = trt.get_plugin_registry().get_creator(name, "1", ns)
    assert creator is not None, f"{plugin_id} is not registered"
    plugin = creator.create_plugin(
        name, ns, node_fields(creator, attrs), TensorRTPhase.BUILD, QuickPluginCreationRequest.STRICT_AOT
    )
    assert type(plugin).__name__ == "_TemplateAOTPlugin", type(plugin)
    n_in = len(inputs)
    out_types = plugin.get_output_data_types([t.dtype for t in inputs], [len(t.shape) for t in inputs])
    builder = IExprBuilder()
    in_exprs = []
    for t in inputs:
        d = DimsExprs(len(t.shape))
        for i, v in enumerate(t.shape):
            d[i] = IDimensionExpr(v, i not in t.dynamic)
        in_exprs.append(d)
    out_exprs = plugin.get_output_shapes(in_exprs, [], builder)
    out_shapes = [tuple(_value(e) for e in d) for d in out_exprs]
    assert len(out_shapes) == plugin.get_num_outputs() == len(out_types)

    def descs(types_: list[Any]) -> list[DynamicPluginTensorDesc]:
        shapes = [t.shape for t in inputs] + out_shapes
        return [
            DynamicPluginTensorDesc(
                PluginTensorDesc(ty, TensorFormat.LINEAR, Dims(s)), Dims(s), Dims(s), Dims(s)
            )
            for ty, s in zip(types_, shapes, strict=True)
        ]

    first = descs([t.dtype for t in inputs] + list(out_types))
    flat = plugin.get_supported_format_combinations(first, n_in)
    width = n_in + len(out_types)
    assert len(flat) % width == 0 and flat, "supported combinations are not whole rows"
    combos = [tuple(d.type for d in flat[i : i + width]) for i in range(0, len(flat), width)]
    assert all(d.format == TensorFormat.LINEAR for d in flat)
    assert tuple(want_types) in combos, f"{want_types} not among the offered combinations {combos}"
    chosen = descs(list(want_types))
    plugin.configure_plugin(chosen[:n_in], chosen[n_in:])
    tactics = plugin.get_valid_tactics()
    plugin.set_tactic(tactics[0] if tactics else 0)
    lp, setter = _LaunchParams(), _SymExprSetter()
    plugin.get_launch_params(in_exprs, chosen, n_in, lp, setter, builder)
    kname, ptx = plugin.get_kernel([d.desc for d in chosen[:n_in]], [d.desc for d in chosen[n_in:]])
    extra = []
    for i in range(setter.nbSymExprs):
        e = setter.exprs[i]
        assert e.type == PluginArgType.INT and e.dtype == PluginArgDataType.INT32, (e.type, e.dtype)
        extra.append(_value(e))
    return AotResult(
        kernel_name=kname.decode() if isinstance(kname, bytes) else kname,
        ptx=ptx.decode() if isinstance(ptx, bytes) else ptx,
        grid=(_value(lp.grid_x), _value(lp.grid_y), _value(lp.grid_z)),
        block=(_value(lp.block_x), _value(lp.block_y), _value(lp.block_z)),
        shared_mem=_value(lp.shared_mem),
        extra_args=tuple(extra),
        output_shapes=out_shapes,
        output_types=list(out_types),
        aliased={i: j for i, j in plugin.aliased_map.items() if j >= 0},
        combinations=combos,
    )


def ptx_params(ptx: str, entry: str) -> list[str]:
    """The `.param` types of `.entry <entry>` in order (e.g. ['.u64', '.u32', ...])."""
    m = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\((.*?)\)", ptx, re.DOTALL)
    assert m, f"no .entry {entry} in the PTX"
    return re.findall(r"\.param\s+(\.\w+)", m.group(1))
