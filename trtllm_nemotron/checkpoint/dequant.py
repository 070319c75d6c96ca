"""Reading a ModelOpt-format (FP8 / NVFP4) checkpoint back as dense tensors, for the reference network.

`dequantized_tensors(reader, dtype)` yields every canonical tensor of `expected_tensors(cfg)` in `dtype`
(the router's fp32 correction bias stays fp32): quantized weights are decoded from their stored form
(`checkpoint.formats`), and the scale tensors (`formats.SCALE_SUFFIXES`) are consumed, not yielded. The
format of each weight is read from its stored dtype, which is unambiguous: uint8 -> NVFP4 (packed E2M1 +
E4M3 block scales + fp32 global scale), float8_e4m3fn -> FP8 per-tensor.

Simulating what the deployed engine does to activations (fake quantization) is quantization, not reading:
`trtllm_nemotron.quant.loading`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from trtllm_nemotron.checkpoint.formats import WEIGHT_SCALE, WEIGHT_SCALE_2, dequantize_fp8, dequantize_nvfp4
from trtllm_nemotron.checkpoint.reader import CheckpointReader
from trtllm_nemotron.config import expected_tensors
from trtllm_nemotron.errors import CheckpointError


def _need(reader: CheckpointReader, name: str, why: str) -> torch.Tensor:
    if name not in reader:
        raise CheckpointError(
            f"quantized checkpoint {reader.path} lacks {name} ({why}); "
            "re-export it with `trtllm-nemotron quantize`"
        )
    return reader.get(name)


def dequantize_weight(reader: CheckpointReader, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight `name` (`<module>.weight`), decoded from FP8 / NVFP4 when stored quantized."""
    w = reader.get(name)
    module = name.removesuffix(".weight")
    if w.dtype == torch.uint8:
        s = _need(reader, f"{module}.{WEIGHT_SCALE}", "NVFP4 block scales")
        s2 = _need(reader, f"{module}.{WEIGHT_SCALE_2}", "NVFP4 global scale")
        return dequantize_nvfp4(w, s, s2, dtype=dtype)
    if w.dtype == torch.float8_e4m3fn:
        s = _need(reader, f"{module}.{WEIGHT_SCALE}", "FP8 weight scale")
        return dequantize_fp8(w, s, dtype=dtype)
    return w.to(dtype)


def dequantized_tensors(reader: CheckpointReader, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(canonical name, dense tensor) for every tensor of `expected_tensors(reader.config)`."""
    for name, spec in expected_tensors(reader.config).items():
        if name not in reader:
            raise CheckpointError(f"checkpoint {reader.path} lacks {name}; it does not match its config.json")
        if name.endswith(".weight"):
            t = dequantize_weight(reader, name, dtype)
        else:
            t = reader.get(name)
            t = t.to(torch.float32 if spec.dtype == "float32" else dtype) if t.is_floating_point() else t
        yield name, t
