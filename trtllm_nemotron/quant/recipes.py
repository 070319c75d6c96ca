"""Quantization recipes as data: an ordered table of (module-name pattern -> format), first match wins.

A module name is a tensor name without `.weight` in canonical `backbone.` naming, e.g.
`backbone.layers.1.mixer.experts.3.up_proj`. Only *linears* are ever quantized (`is_linear`): the `*_proj`
modules and `lm_head`; embeddings, norms, the Mamba conv1d / A_log / D / dt_bias and the router `gate`
are never linears here, whatever the recipe says.

Every recipe starts with ModelOpt's default exclusions (spec §5.4,
`modelopt_recipes/configs/ptq/units/default_disabled_quantizers.yaml`): `*lm_head*`, `*mixer.conv1d*`,
`*router*` / `*.gate`, and `mtp.*` (NVIDIA's export copies the MTP block unquantized and lists it in
`exclude_modules`). Recipes:

| recipe        | routed experts | shared experts | Mamba in/out | attn q/k/v/o | latent fc1/2 | KV  |
|---------------|----------------|----------------|--------------|--------------|--------------|-----|
| `fp8`         | FP8            | FP8            | FP8          | FP8          | FP8          | FP8 |
| `nvfp4`       | NVFP4          | NVFP4          | NVFP4        | NVFP4        | NVFP4        | FP8 |
| `nvfp4-super` | NVFP4          | FP8            | FP8          | BF16         | BF16         | FP8 |
| `bf16`        | BF16           | BF16           | BF16         | BF16         | BF16         | -   |

`nvfp4-super` is the published Nemotron 3 Super NVFP4 layout (MO
`modelopt_recipes/models/nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16/ptq/nvfp4-max-calib.yaml`, max
calibration): a `MIXED_PRECISION` checkpoint. `nvfp4` mirrors hf_ptq's `--qformat nvfp4` with the default
`--kv_cache_qformat fp8`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from trtllm_nemotron.checkpoint.formats import FP8, NVFP4
from trtllm_nemotron.errors import QuantError

# ModelOpt's default disabled quantizers, as they apply to NemotronH module names
DEFAULT_EXCLUDED: tuple[str, ...] = (
    "lm_head",
    "*lm_head*",
    "*mixer.conv1d*",
    "*router*",
    "*mixer.gate",
    "mtp.*",
)


def is_linear(module: str) -> bool:
    """Whether `module` (tensor name minus `.weight`) is a linear layer a recipe may quantize."""
    leaf = module.rsplit(".", 1)[-1]
    return leaf.endswith("_proj") or module == "lm_head"


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    kv_cache: str | None  # "FP8" or None
    rules: tuple[tuple[str, str | None], ...]  # (fnmatch pattern, "FP8" | "NVFP4" | None), first match wins
    default: str | None = None  # format of a linear no rule matches

    def format_for(self, module_name: str) -> str | None:
        """The format of a module (e.g. `backbone.layers.0.mixer.in_proj`): "FP8", "NVFP4" or None (BF16)."""
        module_name = module_name.removesuffix(".weight")
        if not is_linear(module_name):
            return None
        for pat in DEFAULT_EXCLUDED:
            if fnmatch.fnmatchcase(module_name, pat):
                return None
        for pat, fmt in self.rules:
            if fnmatch.fnmatchcase(module_name, pat):
                return fmt
        return self.default

    @property
    def formats(self) -> set[str]:
        return {f for _, f in self.rules if f} | ({self.default} if self.default else set())


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "fp8",
            "FP8 E4M3 per-tensor weights and static activations on every eligible linear; FP8 KV cache",
            "FP8",
            rules=(),
            default=FP8,
        ),
        Recipe(
            "nvfp4",
            "NVFP4 W4A4 (E2M1, 16-blocks, E4M3 block scales) on every eligible linear; FP8 KV cache",
            "FP8",
            rules=(),
            default=NVFP4,
        ),
        Recipe(
            "nvfp4-super",
            "published Nemotron 3 Super layout (MIXED_PRECISION): routed experts NVFP4, shared experts and "
            "Mamba in/out_proj FP8, FP8 KV cache; attention, latent projections, MTP, lm_head, conv1d, "
            "router BF16",
            "FP8",
            rules=(
                ("*.mixer.experts.*", NVFP4),
                ("*.mixer.shared_experts.*", FP8),
                ("*.mixer.in_proj", FP8),
                ("*.mixer.out_proj", FP8),
            ),
            default=None,
        ),
        Recipe(
            "bf16", "no quantization: every tensor in BF16 (the fp32 router bias stays fp32)", None, rules=()
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise QuantError(
            f"unknown recipe {name!r}; choose one of {sorted(RECIPES)} (see `quantize --list-recipes`)"
        )
    return RECIPES[name]
