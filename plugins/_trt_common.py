"""Shared glue for the TensorRT quickly-deployable plugins (imports tensorrt: load only where it exists).

`trt_import()` returns (trt, trtp) or raises PluginError with how to install it; `to_trtp(launch)` turns a
TensorRT-free `plugins.aot.AotLaunch` into the tuple `@trtp.aot_impl` returns:
(kernel name, PTX, trtp.KernelLaunchParams, trtp.SymIntExprs of int32 scalar arguments).
"""

from __future__ import annotations

from typing import Any

from trtllm_nemotron.errors import PluginError


def trt_import() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise PluginError(
            "the TensorRT plugins need TensorRT >= 10.8 with `tensorrt.plugin` (aot_impl); install it on the GPU "
            f"host (pip install tensorrt, or NVIDIA's container): {e}"
        ) from e
    return trt, trtp


def dtype_name(trt: Any, dtype: Any) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16", trt.int32: "int32"}
    if dtype not in names:
        raise PluginError(f"unsupported TensorRT dtype {dtype}; expected one of {sorted(names.values())}")
    return names[dtype]


def to_trtp(trtp: Any, launch: Any) -> tuple[Any, Any, Any, Any]:
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = launch.grid
    params.block_x, params.block_y, params.block_z = launch.block
    params.shared_mem = launch.shared_mem
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in launch.extra_args])
    return launch.kernel_name, launch.ptx, params, extra
