"""Triton `config.pbtxt` from dataclasses, validated by parsing it back into Triton's `ModelConfig` protobuf.

A model configuration is data (`ModelConfigSpec`: tensors, batching, instance groups, string parameters),
rendered to protobuf text format by `render_pbtxt`. We never template text: every `config.pbtxt` this project
writes goes through `validate_pbtxt`, which parses it with `google.protobuf.text_format` into
`tritonclient.grpc.model_config_pb2.ModelConfig` (the proto Triton itself loads) and checks that every
tensor name, dtype and dim and every parameter survived the round trip. A typo in a field name, a dtype
Triton does not know or a duplicated tensor fails at `package` time, not at server start.

Conventions (Triton's): `max_batch_size: 0` means the dims are the full shape (no implicit batch dim);
`None` leaves the field out so a model's `auto_complete_config` can set it (TensorRT-LLM's llmapi model
sets `max_batch_size` and `decoupled` from its `model.yaml`, and its config must not set them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from trtllm_nemotron.errors import PackageError

# The Triton data types a config may name (model_config.proto `DataType`).
TRITON_DTYPES = (
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
)
INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: `name`, Triton `dtype` (TYPE_*), `dims` (-1 = variable)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False  # inputs only: the request may leave it out

    def __post_init__(self) -> None:
        if self.dtype not in TRITON_DTYPES:
            raise PackageError(
                f"tensor {self.name!r}: unknown Triton dtype {self.dtype!r}; expected one of {TRITON_DTYPES}"
            )
        if not self.dims or any(d < -1 or d == 0 for d in self.dims):
            raise PackageError(f"tensor {self.name!r}: dims must be positive or -1, got {self.dims}")


@dataclass(frozen=True)
class InstanceGroup:
    count: int = 1
    kind: str = "KIND_CPU"

    def __post_init__(self) -> None:
        if self.kind not in INSTANCE_KINDS or self.count < 1:
            raise PackageError(
                f"instance group: expected count >= 1 and kind in {INSTANCE_KINDS}, got {self}"
            )


@dataclass(frozen=True)
class ModelConfigSpec:
    """Everything a `config.pbtxt` of this project says."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: str = "python"
    max_batch_size: int | None = 0  # None: leave unset (auto-complete); 0: no Triton-level batching
    decoupled: bool | None = None  # None: leave unset; True: N responses per request (streaming)
    instance_groups: tuple[InstanceGroup, ...] = (InstanceGroup(),)
    parameters: tuple[tuple[str, str], ...] = ()  # string parameters, read by model.py
    comment: str = ""  # written as a `#` header

    def __post_init__(self) -> None:
        names = [t.name for t in self.inputs] + [t.name for t in self.outputs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PackageError(f"model {self.name!r}: tensor names used twice: {dup}")
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise PackageError(f"model {self.name!r}: max_batch_size must be >= 0, got {self.max_batch_size}")

    @property
    def parameter_dict(self) -> dict[str, str]:
        return dict(self.parameters)


def _q(s: str) -> str:
    """A protobuf text-format string literal (JSON escaping is a valid subset)."""
    return json.dumps(s)


def _tensor_block(t: TensorSpec, is_input: bool) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    lines = [f"    name: {_q(t.name)}", f"    data_type: {t.dtype}", f"    dims: [ {dims} ]"]
    if is_input and t.optional:
        lines.append("    optional: true")
    return "  {\n" + "\n".join(lines) + "\n  }"


def render_pbtxt(spec: ModelConfigSpec) -> str:
    """The `config.pbtxt` text for `spec` (protobuf text format, Triton's field names)."""
    out: list[str] = []
    if spec.comment:
        out += [f"# {line}".rstrip() for line in spec.comment.splitlines()] + [""]
    out += [f"name: {_q(spec.name)}", f"backend: {_q(spec.backend)}"]
    if spec.max_batch_size is not None:
        out.append(f"max_batch_size: {spec.max_batch_size}")
    if spec.decoupled is not None:
        out.append(f"model_transaction_policy {{ decoupled: {'true' if spec.decoupled else 'false'} }}")
    groups = ",\n".join(f"  {{ count: {g.count} kind: {g.kind} }}" for g in spec.instance_groups)
    out.append(f"instance_group [\n{groups}\n]")
    out.append("input [\n" + ",\n".join(_tensor_block(t, True) for t in spec.inputs) + "\n]")
    out.append("output [\n" + ",\n".join(_tensor_block(t, False) for t in spec.outputs) + "\n]")
    for key, value in spec.parameters:
        out.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
    return "\n".join(out) + "\n"


def parse_pbtxt(text: str):  # -> model_config_pb2.ModelConfig
    """Parse `config.pbtxt` text into Triton's `ModelConfig` protobuf; PackageError when it does not parse."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise PackageError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from e


def validate_pbtxt(spec: ModelConfigSpec, text: str) -> None:
    """Parse `text` and check it says exactly what `spec` says (names, dtypes, dims, batching, parameters)."""
    from tritonclient.grpc import model_config_pb2

    pb = parse_pbtxt(text)
    problems: list[str] = []

    def check(what: str, got: object, want: object) -> None:
        if got != want:
            problems.append(f"{what}: expected {want!r}, got {got!r}")

    check("name", pb.name, spec.name)
    check("backend", pb.backend, spec.backend)
    check("max_batch_size", pb.max_batch_size, spec.max_batch_size or 0)
    check("decoupled", pb.model_transaction_policy.decoupled, bool(spec.decoupled))
    for kind, pb_list, specs in (("input", pb.input, spec.inputs), ("output", pb.output, spec.outputs)):
        got = [(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in pb_list]
        check(f"{kind}s", got, [(t.name, t.dtype, t.dims) for t in specs])
        if kind == "input":
            check(
                "optional inputs",
                [t.name for t in pb_list if t.optional],
                [t.name for t in specs if t.optional],
            )
    check(
        "instance_group",
        [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in pb.instance_group],
        [(g.count, g.kind) for g in spec.instance_groups],
    )
    check("parameters", {k: v.string_value for k, v in pb.parameters.items()}, spec.parameter_dict)
    if problems:
        raise PackageError(
            f"config.pbtxt for {spec.name!r} does not round-trip through ModelConfig: " + "; ".join(problems)
        )


def write_config(spec: ModelConfigSpec, model_dir) -> str:
    """Render, validate and write `<model_dir>/config.pbtxt`; returns the text."""
    from pathlib import Path

    text = render_pbtxt(spec)
    validate_pbtxt(spec, text)
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    (Path(model_dir) / "config.pbtxt").write_text(text)
    return text


__all__ = [
    "TRITON_DTYPES",
    "TensorSpec",
    "InstanceGroup",
    "ModelConfigSpec",
    "render_pbtxt",
    "parse_pbtxt",
    "validate_pbtxt",
    "write_config",
]
