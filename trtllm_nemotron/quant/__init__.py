"""Quantization: FP8 / NVFP4 formats byte-exact with ModelOpt, recipes as data, streaming calibration and
export in ModelOpt's HF layout, loading quantized checkpoints back, and the accuracy report.

Modules: `fp8`, `nvfp4` (quantize / fake_quantize; its CPU kernel `nvfp4_native` + `nvfp4_kernel.cpp`; the formats' constants and decoders are
`trtllm_nemotron.checkpoint.formats`), `recipes` (`RECIPES`, `get_recipe`), `calib` (layer-by-layer max
calibration), `modelopt_config` (the JSON files), `export` (`quantize_checkpoint`), `loading`
(`apply_activation_quant`, `load_model_as_deployed`), `accuracy` (`accuracy_report`). This package imports no
torch until a function needs it, so `recipes` stays light.
"""

from __future__ import annotations

from typing import Any


def quantize_checkpoint(src: Any, out: Any, **kwargs: Any) -> dict[str, Any]:
    """See `trtllm_nemotron.quant.export.quantize_checkpoint`."""
    from trtllm_nemotron.quant.export import quantize_checkpoint as _q

    return _q(src, out, **kwargs)


__all__ = ["quantize_checkpoint"]
