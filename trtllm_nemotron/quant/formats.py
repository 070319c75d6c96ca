"""Named constants of the two quantized number formats (FP8 E4M3, NVFP4 = E2M1 + E4M3 block scales).

Every magic number of `fp8.py` / `nvfp4.py` is defined once here (spec §5.1, §5.2; the values are
ModelOpt's `modelopt/torch/quantization/utils/numeric_utils.py`: `E2M1_MAX = 6.0`, `E4M3_MAX = 448.0`).

E2M1 (FP4) has 16 codes: bit 3 is the sign, bits 0..2 index the magnitudes
`[0, 0.5, 1, 1.5, 2, 3, 4, 6]`. Rounding to the grid is round-to-nearest with ties to the even
code: the midpoints 0.25, 1.25, 2.5, 5 round down, 0.75, 1.75, 3.5 round up.
"""

from __future__ import annotations

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

FP8 = "FP8"
NVFP4 = "NVFP4"
