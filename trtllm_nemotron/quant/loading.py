"""Reading ModelOpt-format checkpoints back into the reference network (CPU accuracy measurement).

`dequantized_tensors(reader, dtype)` yields every canonical tensor of `expected_tensors(cfg)` in `dtype`
(the router's fp32 correction bias stays fp32): quantized weights are decoded from their stored form,
and the scale tensors (`weight_scale`, `weight_scale_2`, `input_scale`, `k_scale`, `v_scale`) are
consumed, not yielded. The format of each weight is read from its stored dtype, which is unambiguous:
uint8 -> NVFP4 (packed E2M1 + E4M3 block scales + fp32 global scale), float8_e4m3fn -> FP8 per-tensor.

`apply_activation_quant(model, reader)` makes the network see what the deployed engine sees: each linear
whose checkpoint carries an `input_scale` gets a forward pre-hook that fake-quantizes its input (FP8:
static per-tensor; NVFP4: dynamic 16-blocks under the calibrated global scale), and with an FP8 KV cache
the k_proj / v_proj outputs are rounded through FP8 with `k_scale` / `v_scale` (what the cache stores).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from trtllm_nemotron.checkpoint.reader import CheckpointReader
from trtllm_nemotron.config import expected_tensors
from trtllm_nemotron.errors import CheckpointError
from trtllm_nemotron.quant import fp8, nvfp4
from trtllm_nemotron.quant.formats import INPUT_SCALE, K_SCALE, V_SCALE, WEIGHT_SCALE, WEIGHT_SCALE_2

SCALE_SUFFIXES = (WEIGHT_SCALE, WEIGHT_SCALE_2, INPUT_SCALE, K_SCALE, V_SCALE)


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
        return nvfp4.dequantize(w, s, s2, dtype=dtype)
    if w.dtype == torch.float8_e4m3fn:
        s = _need(reader, f"{module}.{WEIGHT_SCALE}", "FP8 weight scale")
        return fp8.dequantize(w, s, dtype=dtype)
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


def _scalar(reader: CheckpointReader, name: str) -> torch.Tensor | None:
    return reader.get(name).float().reshape(()) if name in reader else None


def apply_activation_quant(model: nn.Module, reader: CheckpointReader, prefix: str = "") -> None:
    """Fake-quantize the inputs of quantized linears (and FP8 KV outputs) in place, per the checkpoint.

    `prefix` is the model's place in the checkpoint (e.g. `backbone.layers.3.` for one layer)."""
    for module_name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        module_name = prefix + module_name
        weight = f"{module_name}.weight"
        s = _scalar(reader, f"{module_name}.{INPUT_SCALE}")
        if s is not None and weight in reader:
            quant = nvfp4.fake_quantize if reader.dtype(weight) == torch.uint8 else fp8.fake_quantize
            mod.register_forward_pre_hook(lambda m, args, q=quant, s=s: (q(args[0], s), *args[1:]))
        for kind in (K_SCALE, V_SCALE):
            kv = _scalar(reader, f"{module_name}.{kind}")
            if kv is not None:
                mod.register_forward_hook(lambda m, args, out, s=kv: fp8.fake_quantize(out, s))
