"""The two quantized storage formats of a checkpoint (FP8 E4M3, NVFP4 = E2M1 + E4M3 block scales): their
constants, the names of their scale tensors, and their decoders.

Every magic number of `quant/fp8.py` / `quant/nvfp4.py` is defined once here (spec §5.1, §5.2; the values are
ModelOpt's `modelopt/torch/quantization/utils/numeric_utils.py`: `E2M1_MAX = 6.0`, `E4M3_MAX = 448.0`).
Decoding a stored tensor (`dequantize_fp8`, `dequantize_nvfp4`, `unpack_e2m1`) belongs to reading a
checkpoint, so it lives here, below the network and the quantizer (which encodes: `trtllm_nemotron.quant`).

E2M1 (FP4) has 16 codes: bit 3 is the sign, bits 0..2 index the magnitudes
`[0, 0.5, 1, 1.5, 2, 3, 4, 6]`. Rounding to the grid is round-to-nearest with ties to the even
code: the midpoints 0.25, 1.25, 2.5, 5 round down, 0.75, 1.75, 3.5 round up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trtllm_nemotron.errors import CheckpointError

if TYPE_CHECKING:
    import torch

F8E4M3_MAX = 448.0  # largest finite float8_e4m3fn
F8E4M3_MIN_SCALE = 2.0**-9  # smallest positive E4M3 subnormal: NVFP4 block scales are clamped to it
F4_E2M1_MAX = 6.0  # largest E2M1 magnitude
NVFP4_BLOCK = 16  # elements sharing one E4M3 block scale

# magnitude of each 3-bit E2M1 code; index 8..15 are the negatives (sign bit 3)
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = E2M1_MAGNITUDES + tuple(-v for v in E2M1_MAGNITUDES)
# midpoints between neighbouring magnitudes; those whose upper neighbour has an even code round up
E2M1_ROUND_DOWN_MIDPOINTS = (0.25, 1.25, 2.5, 5.0)  # tie -> lower code (0, 2, 4, 6 are even)
E2M1_ROUND_UP_MIDPOINTS = (0.75, 1.75, 3.5)  # tie -> upper code (2, 4, 6 are even)

# names the checkpoint uses for the per-module quantization tensors (ModelOpt HF export)
WEIGHT_SCALE = "weight_scale"
WEIGHT_SCALE_2 = "weight_scale_2"
INPUT_SCALE = "input_scale"
K_SCALE = "k_scale"
V_SCALE = "v_scale"

SCALE_SUFFIXES = (WEIGHT_SCALE, WEIGHT_SCALE_2, INPUT_SCALE, K_SCALE, V_SCALE)

FP8 = "FP8"
NVFP4 = "NVFP4"


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Two 4-bit E2M1 codes per byte, element 2k in the low nibble: uint8 [..., n/2] -> codes uint8 [..., n]."""
    import torch

    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], -1)


def dequantize_nvfp4(
    packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_scale_2: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """NVFP4 -> dense: `E2M1_VALUES[code] * (float(weight_scale) * weight_scale_2)` per block of 16.

    packed: uint8 [..., in/2]; weight_scale: e4m3 [..., in/16]; weight_scale_2: fp32 []. Returns [..., in]
    in `dtype` (default float32).
    """
    import torch

    if packed.dtype != torch.uint8:
        raise CheckpointError(f"NVFP4 dequantize expects packed uint8 data, got {packed.dtype}")
    n = packed.shape[-1] * 2
    if tuple(weight_scale.shape) != (*packed.shape[:-1], n // NVFP4_BLOCK):
        raise CheckpointError(
            f"NVFP4 block scales have shape {tuple(weight_scale.shape)}, expected "
            f"{(*packed.shape[:-1], n // NVFP4_BLOCK)} for packed data {tuple(packed.shape)}"
        )
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)
    values = table[unpack_e2m1(packed).long()]  # [..., in]
    per_block = weight_scale.to(torch.float32) * weight_scale_2.to(torch.float32)  # [..., nb]
    out = values.reshape(*values.shape[:-1], -1, NVFP4_BLOCK) * per_block.unsqueeze(-1)
    return out.reshape(values.shape).to(dtype or torch.float32)


def dequantize_fp8(
    w_fp8: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`float(w_fp8) * weight_scale`, cast to `dtype` (default float32; ModelOpt `FP8QTensor.dequantize` order)."""
    import torch

    if w_fp8.dtype != torch.float8_e4m3fn:
        raise CheckpointError(f"FP8 dequantize expects float8_e4m3fn data, got {w_fp8.dtype}")
    return (w_fp8.to(torch.float32) * weight_scale.to(torch.float32)).to(dtype or torch.float32)
