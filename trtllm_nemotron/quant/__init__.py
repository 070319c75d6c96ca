"""Quantization: FP8 / NVFP4 formats byte-exact with ModelOpt, recipes as data, streaming calibration and
export in ModelOpt's HF layout, loading quantized checkpoints back, and the accuracy report.

Modules: `formats` (constants), `fp8`, `nvfp4` (quantize / dequantize / fake_quantize), `recipes`
(`RECIPES`, `get_recipe`), `calib` (layer-by-layer max calibration), `modelopt_config` (the JSON files),
`export` (`quantize_checkpoint`), `loading` (`dequantized_tensors`, `apply_activation_quant`), `accuracy`
(`accuracy_report`). This package imports no torch until a function needs it, so `recipes` stays light.
"""

from __future__ import annotations

from typing import Any


def quantize_checkpoint(src: Any, out: Any, **kwargs: Any) -> dict[str, Any]:
    """See `trtllm_nemotron.quant.export.quantize_checkpoint`."""
    from trtllm_nemotron.quant.export import quantize_checkpoint as _q

    return _q(src, out, **kwargs)


__all__ = ["quantize_checkpoint"]
