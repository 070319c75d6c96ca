"""A quantized checkpoint as the deployed engine computes it, on the reference network (CPU accuracy measurement).

Decoding the stored weights is reading a checkpoint (`trtllm_nemotron.checkpoint.dequant`, done by `load_model`);
what this module adds is the engine's activation quantization:

`apply_activation_quant(model, reader)` makes the network see what the deployed engine sees: each linear
whose checkpoint carries an `input_scale` gets a forward pre-hook that fake-quantizes its input (FP8:
static per-tensor; NVFP4: dynamic 16-blocks under the calibrated global scale), and with an FP8 KV cache
the k_proj / v_proj outputs are rounded through FP8 with `k_scale` / `v_scale` (what the cache stores).
`load_model_as_deployed(path, **kw)` is `load_model` followed by that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trtllm_nemotron.checkpoint import open_checkpoint
from trtllm_nemotron.checkpoint.formats import INPUT_SCALE, K_SCALE, V_SCALE
from trtllm_nemotron.checkpoint.reader import CheckpointReader
from trtllm_nemotron.model.loader import load_model, resolve_checkpoint_dir
from trtllm_nemotron.model.network import NemotronHForCausalLM
from trtllm_nemotron.quant import fp8, nvfp4


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


def load_model_as_deployed(path: str | Path, **load_kwargs: Any) -> NemotronHForCausalLM:
    """`load_model(path, **load_kwargs)` with, for a quantized checkpoint, `apply_activation_quant`."""
    model = load_model(path, **load_kwargs)
    with open_checkpoint(resolve_checkpoint_dir(path)) as reader:
        if reader.quantization is not None:
            apply_activation_quant(model, reader)
    return model
