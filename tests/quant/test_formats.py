"""FP8 / NVFP4 formats: byte equality with nvidia-modelopt 0.47 (the format oracle, imported here)."""

from __future__ import annotations

import pytest
import torch

from trtllm_nemotron.checkpoint.formats import (
    E2M1_VALUES,
    F8E4M3_MAX,
    dequantize_fp8,
    dequantize_nvfp4,
    unpack_e2m1,
)
from trtllm_nemotron.errors import QuantError
from trtllm_nemotron.quant import fp8, nvfp4, nvfp4_native

NVFP4QTensor = pytest.importorskip("modelopt.torch.quantization.qtensor.nvfp4_tensor").NVFP4QTensor
quant_utils = pytest.importorskip("modelopt.torch.export.quant_utils")


@pytest.fixture(autouse=True, params=["native", "torch"])
def nvfp4_kernel(request, monkeypatch):
    """Every test runs on both NVFP4 paths: the CPU C++ kernel and the torch formulation."""
    monkeypatch.setenv(nvfp4_native.ENV, request.param)
    return request.param


def test_nvfp4_native_kernel_is_used_for_cpu_weights(nvfp4_kernel):
    w = torch.randn(4, 32, dtype=torch.bfloat16)
    assert nvfp4_native.usable(w) == (nvfp4_kernel == "native")
    assert not nvfp4_native.usable(w.float().half()) and not nvfp4_native.usable(w.t())  # fp16, strided


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_nvfp4_paths_agree_on_a_large_weight_with_every_tie(dtype):
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(384, 512, generator=g) * 0.02).to(dtype)
    # exact E2M1 midpoints under a divisor of 1: block scale 448 when weight_scale_2 = 1/448
    w[0, :16] = torch.tensor(
        [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 6.0]
    )
    ref_q, ref_s, ref_s2 = NVFP4QTensor.quantize(w, 16)
    packed, scale, s2 = nvfp4.quantize(w)
    assert torch.equal(packed, ref_q._quantized_data)
    assert torch.equal(_bytes(scale), _bytes(ref_s)) and torch.equal(s2, ref_s2)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.logspace(-3, 1, shape[-1])  # wide dynamic range per row
    w = w.to(dtype)
    w.view(-1, shape[-1])[0, :16] = 0  # an all-zero block
    if shape[0] > 2:
        w.view(-1, shape[-1])[2] = 0  # an all-zero row
    return w


CASES = [
    ((64, 128), torch.bfloat16),
    ((7, 48), torch.float32),
    ((3, 16), torch.float16),
    ((5, 3, 32), torch.bfloat16),
    ((256, 1024), torch.bfloat16),
    ((1, 32), torch.float32),
]


@pytest.mark.parametrize("shape,dtype", CASES)
def test_nvfp4_quantize_matches_modelopt(shape, dtype):
    w = _tensor(shape, dtype, seed=len(shape) * 7 + shape[-1])
    ref_q, ref_s, ref_s2 = NVFP4QTensor.quantize(w, 16)
    packed, scale, s2 = nvfp4.quantize(w)
    assert packed.dtype == torch.uint8 and packed.shape == (*shape[:-1], shape[-1] // 2)
    assert scale.dtype == torch.float8_e4m3fn and scale.shape == (*shape[:-1], shape[-1] // 16)
    assert s2.dtype == torch.float32 and s2.shape == ()
    assert torch.equal(packed, ref_q._quantized_data)
    assert torch.equal(_bytes(scale), _bytes(ref_s))
    assert torch.equal(s2, ref_s2)
    ref_d = ref_q.dequantize(dtype=torch.float32, scale=ref_s, double_scale=ref_s2, block_sizes={-1: 16})
    assert torch.equal(dequantize_nvfp4(packed, scale, s2), ref_d)


def test_nvfp4_rounding_ties_and_saturation_match_modelopt():
    # block scale 448 and global scale 1/448 make the block's divisor exactly 1.0: q == w
    mags = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.0, 0.24, 0.76, 6.0, 5.9, 0.5, 3.0, 4.5, 2.25]
    row = torch.tensor(mags + [-m for m in mags], dtype=torch.float32)
    s2 = torch.tensor(1.0 / 448.0)
    w = row[None] * 1.0
    ref_q, ref_s, _ = NVFP4QTensor.quantize(w, 16, weights_scaling_factor_2=s2)
    packed, scale, _ = nvfp4.quantize(w, weight_scale_2=s2)
    assert torch.equal(packed, ref_q._quantized_data)
    assert torch.equal(_bytes(scale), _bytes(ref_s))
    codes = unpack_e2m1(packed)[0, :16].tolist()
    # ties go to the even code: .25->0, .75->1.0, 1.25->1.0, 1.75->2.0, 2.5->2.0, 3.5->4.0, 5->4.0
    assert [E2M1_VALUES[c] for c in codes[:7]] == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    # element 2k in the low nibble
    assert packed[0, 0].item() == codes[0] | (codes[1] << 4)


def test_nvfp4_activation_fake_quant_uses_global_input_scale():
    x = torch.randn(4, 64)
    s = nvfp4.global_scale_from_amax(x.abs().max())
    ref_q, ref_s, ref_s2 = NVFP4QTensor.quantize(x, 16, weights_scaling_factor_2=s)
    ref = ref_q.dequantize(dtype=torch.float32, scale=ref_s, double_scale=ref_s2, block_sizes={-1: 16})
    assert torch.equal(nvfp4.fake_quantize(x, s), ref)
    # worst case: half the widest E2M1 gap (4 -> 6) at a block scale of amax/6 (plus E4M3 rounding)
    assert (nvfp4.fake_quantize(x, s) - x).abs().max() <= x.abs().max() / 6 * 1.07


def test_nvfp4_rejects_bad_input_dim():
    with pytest.raises(QuantError, match="multiple of 16"):
        nvfp4.quantize(torch.randn(4, 24))
    with pytest.raises(QuantError, match="NaN or inf"):
        nvfp4.quantize(torch.full((2, 16), float("nan")))


def test_nvfp4_all_zero_tensor_is_finite():
    packed, scale, s2 = nvfp4.quantize(torch.zeros(2, 32))
    assert float(s2) == pytest.approx(1 / 448) and torch.all(packed == 0)
    assert torch.equal(dequantize_nvfp4(packed, scale, s2), torch.zeros(2, 32))


@pytest.mark.parametrize("shape,dtype", [c for c in CASES if len(c[0]) == 2] + [((9, 33), torch.bfloat16)])
def test_fp8_quantize_matches_modelopt_export(shape, dtype):
    # 2-D linear weights (ModelOpt's 3-D stacked-expert branch divides in fp32; our experts are 2-D)
    w = _tensor(shape, dtype, seed=shape[-1])
    q, s = fp8.quantize(w)
    amax = w.abs().max().float()  # ModelOpt: weight quantizer amax (max calibration) / maxbound, fp32
    ref_s = torch.tensor(amax / 448.0) if amax.dim() else amax / 448.0
    ref_q = quant_utils.to_quantized_weight(w, ref_s, quant_utils.QUANTIZATION_FP8)
    assert q.dtype == torch.float8_e4m3fn and s.shape == () and s.dtype == torch.float32
    assert torch.equal(s, ref_s)
    assert torch.equal(_bytes(q), _bytes(ref_q))
    back = dequantize_fp8(q, s)
    assert torch.allclose(back, w.float(), rtol=2**-3, atol=float(s) * 2**-6)


def test_fp8_zero_tensor_and_saturating_fake_quant():
    q, s = fp8.quantize(torch.zeros(3, 4))
    assert float(s) == 1.0 and torch.all(q.float() == 0)
    x = torch.tensor([0.0, 1.0, -1000.0])
    y = fp8.fake_quantize(x, 1.0 / F8E4M3_MAX)
    assert y.tolist() == [0.0, 1.0, -1.0]  # saturates at 448 * scale


def _modelopt_export_linear(cfg_name: str, w: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Quantize one nn.Linear with ModelOpt's own mtq.quantize + HF export; return its exported buffers."""
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export.unified_export_hf import _export_quantized_weight

    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False).to(w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = torch.nn.Sequential(lin)
    mtq.quantize(model, getattr(mtq, cfg_name), lambda m: m(x))
    _export_quantized_weight(model[0], w.dtype)
    return {k: v for k, v in model[0].state_dict().items() if "quantizer" not in k}


@pytest.mark.parametrize("cfg_name,fmt", [("FP8_DEFAULT_CFG", "FP8"), ("NVFP4_DEFAULT_CFG", "NVFP4")])
def test_full_modelopt_export_path_matches(cfg_name, fmt):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(48, 64, generator=g) * 0.05).to(torch.bfloat16)
    x = (torch.randn(6, 64, generator=g) * 3).to(torch.bfloat16)
    ref = _modelopt_export_linear(cfg_name, w, x)
    amax = x.abs().max()
    if fmt == "FP8":
        q, s = fp8.quantize(w)
        mine = {"weight": q, "weight_scale": s, "input_scale": fp8.scale_from_amax(amax)}
    else:
        p, s, s2 = nvfp4.quantize(w)
        mine = {
            "weight": p,
            "weight_scale": s,
            "weight_scale_2": s2,
            "input_scale": nvfp4.global_scale_from_amax(amax),
        }
    assert sorted(ref) == sorted(mine)
    for k, v in mine.items():
        assert ref[k].dtype == v.dtype and tuple(ref[k].shape) == tuple(v.shape), k
        assert torch.equal(_bytes(ref[k]), _bytes(v)), k
