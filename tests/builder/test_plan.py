"""Memory planner: hand-computed Super numbers, refusal of impossible plans, the batch search."""

from __future__ import annotations

import pytest

from builder.plan import plan_for_build, plan_memory
from trtllm_nemotron.config import preset
from trtllm_nemotron.errors import BuildError

SUPER = preset("super-120b")

# ---- Super dimensions, written out by hand (spec §2.2) ----
H, V, L, F, S, E, X = (
    4096,
    131072,
    88,
    2688,
    5376,
    512,
    1024,
)  # hidden, vocab, layers, expert F, shared, E, latent
N_M, N_E, N_A = 40, 40, 8  # Mamba, MoE, attention layers
D_INNER, D_STATE, G, NH, K = 8192, 128, 8, 128, 4
CONV_DIM = D_INNER + 2 * G * D_STATE  # 10240
D_IN_PROJ = 2 * D_INNER + 2 * G * D_STATE + NH  # 18560
Q, KV = 32 * 128, 2 * 128  # q width, k/v width (2 kv heads x 128)

MAMBA_IN, MAMBA_OUT = D_IN_PROJ * H, H * D_INNER
MAMBA_SMALL_BF16 = CONV_DIM * K + CONV_DIM + D_INNER  # conv1d weight + bias, gated-norm weight
MAMBA_FP32 = 0  # A_log, D, dt_bias are stored in the model dtype (bf16) in HF checkpoints
MAMBA_SMALL_BF16 += 3 * NH
ATTN = Q * H + 2 * KV * H + H * Q
EXPERT = F * X  # one of up_proj [F, X] / down_proj [X, F]
SHARED = S * H  # one of the shared up/down
LATENT = X * H  # one of fc1/fc2 latent
GATE = E * H
ROUTER_BIAS_FP32 = E

# MTP block: pattern "*E", unquantized in every recipe
MTP_BF16 = 2 * H + 2 * H * H + 2 * H + ATTN + GATE + 2 * E * EXPERT + 2 * SHARED + 2 * LATENT + H
MTP_FP32 = ROUTER_BIAS_FP32


def super_bf16_bytes() -> int:
    bf16 = 2 * V * H + L * H + H  # embeddings + lm_head, layer norms, norm_f
    bf16 += N_M * (MAMBA_IN + MAMBA_OUT + MAMBA_SMALL_BF16)
    bf16 += N_A * ATTN
    bf16 += N_E * (GATE + 2 * E * EXPERT + 2 * SHARED + 2 * LATENT)
    bf16 += MTP_BF16
    fp32 = N_E * ROUTER_BIAS_FP32 + MTP_FP32
    return 2 * bf16 + 4 * fp32


def nvfp4(n: int) -> int:
    return n // 2 + n // 16 + 8  # packed e2m1 + e4m3 block scales + weight_scale_2 + input_scale


def fp8(n: int) -> int:
    return n + 8  # e4m3 + weight_scale + input_scale


def test_super_weights_bf16_hand_computed():
    p = plan_memory(SUPER, "b200", recipe="bf16", gpus=2, max_seq_len=4096, batch=1, mtp=0)
    assert p.weights_bytes == super_bf16_bytes()
    assert 245e9 < p.weights_bytes < 249e9  # ~123.6 B parameters x 2 bytes


def test_super_weights_nvfp4_super_hand_computed():
    """Routed experts NVFP4, shared experts + Mamba in/out_proj FP8, rest BF16, MTP unquantized."""
    want = super_bf16_bytes()
    want -= 2 * (N_E * 2 * E * EXPERT + N_E * 2 * SHARED + N_M * (MAMBA_IN + MAMBA_OUT))
    want += N_E * 2 * E * nvfp4(EXPERT) + N_E * 2 * fp8(SHARED) + N_M * (fp8(MAMBA_IN) + fp8(MAMBA_OUT))
    want += N_A * 8  # FP8 KV cache: fp32 k_scale + v_scale per attention layer
    p = plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=4096, batch=1, mtp=3)
    assert p.weights_bytes == want
    assert p.weights_by_format["nvfp4"] == N_E * 2 * E * nvfp4(EXPERT)
    assert p.weights_by_format["fp8"] == N_E * 2 * fp8(SHARED) + N_M * (fp8(MAMBA_IN) + fp8(MAMBA_OUT))
    assert 78e9 < p.weights_bytes < 80e9
    assert "W4A4" in p.weight_modes["nvfp4"]
    hopper = plan_memory(SUPER, "h200", recipe="nvfp4-super", gpus=1, max_seq_len=4096, batch=1, mtp=3)
    assert hopper.weights_bytes == want and "W4A16" in hopper.weight_modes["nvfp4"]


def test_super_weights_per_recipe_are_ordered():
    w = {
        r: plan_memory(SUPER, "b200", recipe=r, gpus=8, max_seq_len=4096, batch=1, mtp=0).weights_bytes
        for r in ("bf16", "fp8", "nvfp4-super", "nvfp4")
    }
    assert w["bf16"] > w["fp8"] > w["nvfp4-super"] > w["nvfp4"]


def test_super_mamba_state_per_layer_fp32():
    p = plan_memory(
        SUPER, "h100", recipe="bf16", gpus=4, max_seq_len=4096, batch=1, mtp=0, ssm_dtype="float32"
    )
    # TP=4 divides heads and conv channels; at TP=1 it is the spec's 4.25 MB
    p1 = plan_memory(
        SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=4096, batch=1, mtp=0, ssm_dtype="float32"
    )
    conv = CONV_DIM * (K - 1) * 2  # bf16 conv window: 61 440 B
    ssm = NH * 64 * D_STATE * 4  # fp32 SSM state: 4 194 304 B
    assert (p1.conv_bytes_per_layer, p1.ssm_bytes_per_layer) == (conv, ssm)
    assert p1.conv_bytes_per_layer + p1.ssm_bytes_per_layer == 4_255_744
    assert abs((conv + ssm) / 1e6 - 4.25) < 0.01
    assert p1.state_bytes_per_seq == N_M * (conv + ssm)
    assert p.conv_bytes_per_layer + p.ssm_bytes_per_layer == (conv + ssm) // 4


def test_super_kv_per_token_and_mtp_copies():
    p = plan_memory(SUPER, "b200", recipe="bf16", gpus=2, max_seq_len=4096, batch=1, mtp=0)
    assert p.kv_bytes_per_token == N_A * 2 * 1 * 128 * 2  # 8 layers, K+V, 2 kv heads / TP 2, bf16
    q = plan_memory(
        SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=4096, batch=1, mtp=3, ssm_dtype="float32"
    )
    assert (
        q.kv_dtype == "fp8" and q.kv_bytes_per_token == (N_A + 1) * 2 * 2 * 128
    )  # + the MTP attention layer
    assert q.state_bytes_per_seq == N_M * 4_255_744 * (1 + 4)  # + per-draft-step copies for N+1 = 4 steps


def test_impossible_plan_refused_with_numbers():
    p = plan_memory(SUPER, "h100", recipe="nvfp4-super", gpus=1, max_seq_len=131072, batch=1, mtp=3)
    assert not p.fits and p.max_batch == 0
    with pytest.raises(
        BuildError, match=r"(?s)weights per device +79\.\d\d GB.*DOES NOT FIT.*> 80\.00 GB.*>= 2 x h100"
    ):
        p.check()
    assert plan_memory(SUPER, "h100", recipe="nvfp4-super", gpus=2, max_seq_len=131072, batch=1, mtp=3).fits
    assert plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=131072, batch=1, mtp=3).fits


def test_max_batch_is_the_boundary():
    p = plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=131072, batch=1, mtp=3)
    mb = p.max_batch
    assert mb > 1
    at = plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=131072, batch=mb, mtp=3)
    over = plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=131072, batch=mb + 1, mtp=3)
    assert at.fits and not over.fits
    assert "largest batch that fits is" in over.explain()
    assert mb * p.per_seq_bytes <= p.cache_budget_bytes < (mb + 1) * p.per_seq_bytes


def test_plan_for_build_picks_nvidia_minimums():
    """NVIDIA's hardware table: NVFP4 1 x B200 or 2 x H100; BF16 2 x B200 or 4 x H100."""
    assert plan_for_build(SUPER, "b200", recipe="nvfp4-super", mtp=3).gpus == 1
    assert plan_for_build(SUPER, "h100", recipe="nvfp4-super", mtp=3).gpus == 2
    assert plan_for_build(SUPER, "b200", recipe="bf16", mtp=3).gpus == 2
    assert plan_for_build(SUPER, "h100", recipe="bf16", mtp=3).gpus == 4
    p = plan_for_build(SUPER, "b200", recipe="nvfp4-super", mtp=3)
    assert p.batch == 64  # NVIDIA's MTP recipe batch, which fits
    with pytest.raises(BuildError, match="impossible plan"):
        plan_for_build(SUPER, "h100", recipe="nvfp4-super", mtp=3, gpus=1)
    tiny = plan_for_build(preset("tiny"), "b200", recipe="bf16", mtp=3)
    assert tiny.gpus == 1 and tiny.batch == 2048 and tiny.max_seq_len == 4096


def test_bad_inputs():
    with pytest.raises(BuildError, match="no MTP layers"):
        plan_memory(preset("nano-30b"), "b200", recipe="bf16", max_seq_len=4096, batch=1, mtp=2)
    with pytest.raises(BuildError, match="unknown target"):
        plan_memory(SUPER, "a100", recipe="bf16", max_seq_len=4096, batch=1, mtp=0)
    with pytest.raises(BuildError, match="cpu target"):
        plan_memory(SUPER, "cpu", recipe="bf16", gpus=2, max_seq_len=4096, batch=1, mtp=0)


@pytest.mark.parametrize("gpus", [3, 5, 6, 7, 12, 16])
def test_tensor_parallel_sizes_nemotron_h_refuses_are_refused(gpus):
    # TensorRT-LLM's NemotronHForCausalLM raises "TP has to be either 1, 2, 4 or 8"
    with pytest.raises(BuildError, match=r"tensor-parallel size 1, 2, 4 or 8"):
        plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=gpus, max_seq_len=4096, batch=1, mtp=0)
    with pytest.raises(BuildError, match=rf"--gpus {gpus}"):
        plan_for_build(SUPER, "b200", recipe="nvfp4-super", mtp=0, gpus=gpus)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_tensor_parallel_sizes_nemotron_h_accepts(gpus):
    assert (
        plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=gpus, max_seq_len=4096, batch=1, mtp=0).gpus
        == gpus
    )


def test_plan_prints_the_estimated_build_time_for_super():
    from builder.plan import QUANT_MB_S_CPU, QUANT_MB_S_GPU_HOST

    p = plan_memory(SUPER, "b200", recipe="nvfp4-super", gpus=1, max_seq_len=4096, batch=1, mtp=3)
    assert p.source_bytes == 247_222_108_160  # Super's bf16 checkpoint (fp32 router biases and Mamba A/D)
    assert p.quantize_seconds_est == pytest.approx(p.source_bytes / 1e6 / QUANT_MB_S_GPU_HOST, abs=0.1)
    assert "build time (est.)" in p.explain() and "GPU" in p.quantize_rate
    cpu = plan_memory(SUPER, "cpu", recipe="nvfp4-super", gpus=1, max_seq_len=4096, batch=1, mtp=0)
    assert cpu.quantize_seconds_est == pytest.approx(cpu.source_bytes / 1e6 / QUANT_MB_S_CPU, abs=0.1)
    assert "bench-quant" in cpu.quantize_rate
