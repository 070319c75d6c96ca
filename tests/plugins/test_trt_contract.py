"""The TensorRT plugins against TensorRT's own QDP code, on a CPU host.

What runs as shipped: `tensorrt/plugin/*.py` from the `tensorrt-cu12-bindings==11.4.0.106` wheel -- the
`@trtp.register` / `@trtp.autotune` / `@trtp.aot_impl` validators, the plugin creator and the AOT plugin
class that calls our `aot_impl`. What is stood in: ONLY the native layer of `tensorrt` (the compiled
bindings, which need libnvinfer): enums, empty base classes, containers, an integer shape-expression
builder and the registry call (tests/plugins/trt_standin.py). `plugins/*/trt.py` are imported unchanged.

For each plugin, at Super's and the embedded model's shapes, each node goes through the calls TensorRT's
builder makes for an AOT node (trt_standin.aot_build), compiling for sm_100 and sm_90, and the result is
checked against the AOT rules (docs/benchmarks.md, ../shared/specs/trt_engine.md §1.3-1.4): int32
SymInt32 extra arguments only, kernel parameters ordered inputs -> ints -> outputs (read from the PTX),
PTX for the requested SM, no Triton global/profile scratch, the launch grid the launch rules promise.
"""

from __future__ import annotations

import math

import pytest

from trtllm_nemotron.config import preset

from .trt_standin import StandIn, Tensor, aot_build, ptx_params

pytest.importorskip("triton")

SUPER, TINY = preset("super-120b"), preset("tiny")
CONFIGS = {"super": SUPER, "embedded": TINY}
SMS = (100, 90)


@pytest.fixture(scope="module")
def st():
    with StandIn() as s:
        import plugins.trt as ptrt

        s.plugins = ptrt
        yield s


def _check_abi(res, n_in, n_extra, n_out, sm):
    """PTX: targets sm_<sm>a; entry params = n_in pointers, n_extra int32, n_out pointers (+ 2 hidden
    scratch pointers that Triton >= 3.3 appends, allowed only because the scratch sizes are 0 -- asserted
    by plugins.aot.check_aot_abi inside aot_impl)."""
    assert f".target sm_{sm}a" in res.ptx
    params = ptx_params(res.ptx, res.kernel_name)
    want = [".u64"] * n_in + [".u32"] * n_extra + [".u64"] * n_out
    got = [".u32" if p == ".s32" else p for p in params]
    assert got[: len(want)] == want, (got, want)
    assert got[len(want) :] in ([], [".u64", ".u64"])
    assert len(res.extra_args) == n_extra
    assert res.block[1:] == (1, 1) and res.block[0] % 32 == 0
    assert res.shared_mem >= 0


def test_every_plugin_is_registered(st):
    names = {k[0] for k in st.trt.get_plugin_registry().creators}
    assert names == {p.split("::")[1] for p in st.plugins.PLUGINS}
    assert {k[2] for k in st.trt.get_plugin_registry().creators} == {"trtllm_nemotron"}


@pytest.mark.parametrize("sm", SMS)
@pytest.mark.parametrize("name", ["super", "embedded"])
def test_mamba_state_update_aot(st, monkeypatch, name, sm):
    monkeypatch.setenv("TRTLLM_NEMOTRON_PLUGIN_SM", str(sm))
    cfg = CONFIGS[name]
    H, P, N, G, K = cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.ssm_state_size, cfg.n_groups, cfg.conv_kernel
    conv_dim = H * P + 2 * G * N
    dt = st.trt.DataType
    for batch, T, keep in ((1, 1, 0), (8, 4, 1)):
        pool = batch + 3
        ins = [
            Tensor(dt.BF16, (batch, T, conv_dim), (0, 1)),
            Tensor(dt.BF16, (batch, T, H), (0, 1)),
            Tensor(dt.BF16, (conv_dim, K)),
            Tensor(dt.BF16, (conv_dim,)),
            *(Tensor(dt.FLOAT, (H,)) for _ in range(3)),
            Tensor(dt.INT32, (batch,), (0,)),
            Tensor(dt.BF16, (pool, conv_dim, K - 1), (0,)),
            Tensor(dt.FLOAT, (pool, H, P, N), (0,)),
            Tensor(dt.BF16, (batch, conv_dim, K - 1), (0,)),
        ]
        attrs = dict(num_heads=H, n_groups=G, head_dim=P, state_size=N, conv_kernel=K, keep_steps=keep)
        want = [t.dtype for t in ins] + [dt.FLOAT, dt.BF16, dt.FLOAT, dt.FLOAT, dt.BF16]
        res = aot_build(st, "trtllm_nemotron::mamba_state_update", ins, attrs, want)
        _check_abi(res, n_in=11, n_extra=6, n_out=5, sm=sm)
        assert res.extra_args == (T, H, P, N, G, conv_dim)
        steps = [(batch, T, H, P, N), (batch, T, conv_dim, K - 1)] if keep else [(1,), (1,)]
        assert res.output_shapes == [(batch, T, H * P), ins[8].shape, ins[9].shape, *steps]
        assert res.aliased == {1: 8, 2: 9}  # conv_state / ssm_state outputs update their inputs in place
        # heads x head-dim blocks (mamba_ssm's layout), not one program per group
        block_p = min(1 << (P - 1).bit_length(), 2048 // (1 << (N - 1).bit_length()))
        assert res.grid == (batch, H, math.ceil(P / block_p))
    if name == "super":
        assert res.grid[0] * res.grid[1] * res.grid[2] >= 8 * 512  # batch 8: 4096 programs (was 64)


@pytest.mark.parametrize("sm", SMS)
@pytest.mark.parametrize("name", ["super", "embedded"])
def test_latent_moe_routing_aot(st, monkeypatch, name, sm):
    monkeypatch.setenv("TRTLLM_NEMOTRON_PLUGIN_SM", str(sm))
    cfg = CONFIGS[name]
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    dt = st.trt.DataType
    for T in (1, 300):
        attrs = dict(
            num_experts=E,
            top_k=k,
            n_group=cfg.n_group,
            topk_group=cfg.topk_group,
            norm_topk_prob=int(cfg.norm_topk_prob),
            routed_scaling_factor=float(cfg.routed_scaling_factor),
        )
        ins = [Tensor(dt.FLOAT, (T, E), (0,)), Tensor(dt.FLOAT, (E,))]
        res = aot_build(
            st, "trtllm_nemotron::latent_moe_routing", ins, attrs, [dt.FLOAT, dt.FLOAT, dt.FLOAT, dt.INT32]
        )
        _check_abi(res, n_in=2, n_extra=2, n_out=2, sm=sm)
        assert res.extra_args == (T, E)
        assert res.output_shapes == [(T, k), (T, k)]
        assert res.grid[1:] == (1, 1) and res.grid[0] >= 1
        # the float attribute is baked into the PTX (no float parameter exists): a different scale gives
        # different code
        if T == 1:
            other = aot_build(
                st,
                "trtllm_nemotron::latent_moe_routing",
                ins,
                dict(attrs, routed_scaling_factor=1.0),
                [dt.FLOAT, dt.FLOAT, dt.FLOAT, dt.INT32],
            )
            assert other.ptx != res.ptx

        perm = aot_build(
            st,
            "trtllm_nemotron::moe_expert_permutation",
            [Tensor(dt.INT32, (T, k), (0,))],
            dict(num_experts=E),
            [dt.INT32, dt.INT32, dt.INT32],
        )
        _check_abi(perm, n_in=1, n_extra=2, n_out=2, sm=sm)
        assert perm.extra_args == (T * k, E)
        assert perm.output_shapes == [(E,), (T * k,)]


def test_missing_node_attribute_is_refused(st):
    """TensorRT passes every attribute positionally to aot_impl: a node lacking one would shift the rest."""
    dt = st.trt.DataType
    with pytest.raises(AssertionError, match="lacks attribute top_k"):
        aot_build(
            st,
            "trtllm_nemotron::latent_moe_routing",
            [Tensor(dt.FLOAT, (1, 8)), Tensor(dt.FLOAT, (8,))],
            dict(num_experts=8),
            [dt.FLOAT, dt.FLOAT, dt.FLOAT, dt.INT32],
        )


@pytest.mark.parametrize("sm", SMS)
@pytest.mark.parametrize("name", ["super", "embedded"])
@pytest.mark.parametrize("quant", [False, True], ids=["bf16", "nvfp4"])
def test_latent_moe_experts_aot(st, monkeypatch, name, sm, quant):
    from plugins.latent_moe_experts import launch as xl

    monkeypatch.setenv("TRTLLM_NEMOTRON_PLUGIN_SM", str(sm))
    cfg = CONFIGS[name]
    E, k, X, F = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.expert_dim, cfg.moe_intermediate_size
    dt = st.trt.DataType
    for T in (1, 300):
        ins = [
            Tensor(dt.BF16, (T, X), (0,)),
            Tensor(dt.FLOAT, (T, k), (0,)),
            Tensor(dt.INT32, (E,)),
            Tensor(dt.INT32, (T * k,), (0,)),
        ]
        if quant:
            ins += [
                Tensor(dt.INT8, (E, F, X // 2)),
                Tensor(dt.INT8, (E, F, X // 16)),
                Tensor(dt.FLOAT, (E,)),
                Tensor(dt.INT8, (E, X, F // 2)),
                Tensor(dt.INT8, (E, X, F // 16)),
                Tensor(dt.FLOAT, (E,)),
            ]
            plugin = "trtllm_nemotron::latent_moe_experts_nvfp4"
        else:
            ins += [Tensor(dt.BF16, (E, F, X)), Tensor(dt.BF16, (E, X, F))]
            plugin = "trtllm_nemotron::latent_moe_experts"
        res = aot_build(st, plugin, ins, {}, [t.dtype for t in ins] + [dt.FLOAT])
        _check_abi(res, n_in=len(ins), n_extra=4, n_out=1, sm=sm)
        assert res.extra_args == (k, E, X, F)
        assert res.output_shapes == [(T, k, X)] and res.output_types == [dt.FLOAT]
        block_n = min(xl.BLOCK_N, max(16, 1 << (X - 1).bit_length()))
        assert res.grid == (E, math.ceil(T / xl.BLOCK_M), math.ceil(X / block_n))
