"""trtllm-nemotron: deployment pipeline for NVIDIA Nemotron 3 Super and the Nemotron-H family.

Public API (lazy, so `import trtllm_nemotron` stays light):
    load_model(path, dtype=torch.float32, device="cpu") -> torch.nn.Module
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(path: Any, dtype: Any = None, device: Any = "cpu", **kwargs: Any) -> Any:
    """Load a HF-format NemotronH checkpoint (BF16, FP8 or NVFP4) as our reference network."""
    from trtllm_nemotron.model.loader import load_model as _load

    return _load(path, dtype=dtype, device=device, **kwargs)


__all__ = ["load_model", "__version__"]
