"""Build defaults, in one place: the default model, target, recipe, MTP depth and output dir.

The default model is the embedded one shipped in `trtllm_nemotron/assets/nemotron-tiny/` (config.json +
safetensors + tokenizer, trained in-repo). Until that directory exists, `default_model_dir()` makes a
random tiny checkpoint (`checkpoint.tiny.make_tiny`, seed 0, deterministic) once, in a cache dir, and
returns that; `make_tiny` writes atomically, so a crash never leaves a half-written default model.
"""

from __future__ import annotations

from pathlib import Path

import trtllm_nemotron
from trtllm_nemotron.fileio import cache_dir

EMBEDDED_MODEL_DIR = Path(trtllm_nemotron.__file__).parent / "assets" / "nemotron-tiny"
DEFAULT_TARGET = "b200"
DEFAULT_RECIPE = "nvfp4-super"
DEFAULT_MTP = 3
DEFAULT_OUT = Path("build/engine")


def default_model_dir() -> Path:
    """The embedded model dir if shipped, else a tiny checkpoint made on the fly (cached)."""
    if (EMBEDDED_MODEL_DIR / "config.json").is_file():
        return EMBEDDED_MODEL_DIR
    out = cache_dir() / "tiny-seed0"
    if not (out / "config.json").is_file():
        from trtllm_nemotron.checkpoint.tiny import make_tiny

        make_tiny(out, seed=0)
    return out
