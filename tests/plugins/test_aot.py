"""AOT: every kernel compiles for sm_100 and sm_90 without a GPU; cuobjdump (from the triton wheel) names
the right architecture; the launch rules (pure functions) give what a TensorRT aot_impl returns."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from plugins.aot import aot_launch, compile_all, disassemble, ptx_target, sass_arch
from plugins.latent_moe_experts import launch as xl
from plugins.latent_moe_routing import launch as rl
from plugins.mamba_state_update import launch as ml
from plugins.ptx import driver_requirement, ptx_isa_version
from trtllm_nemotron.config import preset
from trtllm_nemotron.errors import PluginError


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    return out, compile_all(out, (100, 90), config=preset("tiny"))


def test_compile_all_writes_index_ptx_cubin(compiled):
    out, index = compiled
    assert sorted(index) == ["sm_100", "sm_90"]
    for sm in (100, 90):
        ix = json.loads((out / f"sm_{sm}" / "index.json").read_text())
        assert ix == index[f"sm_{sm}"]
        # the PTX ISA of every kernel and the driver it needs (plugins/ptx.py) are recorded for build.json
        isa = ix["ptx_isa"]
        for k in ix["kernels"]:
            assert ptx_isa_version((out / f"sm_{sm}" / k["ptx"]).read_text()) == isa
        assert ix["driver"] == driver_requirement(isa) and ix["driver"]["min_cuda_driver_api"]
        names = {k["name"] for k in ix["kernels"]}
        assert {
            "latent_moe_routing",
            "moe_expert_permutation",
            "mamba_state_update_bf16_statef32_steps",
            "latent_moe_experts",
            "latent_moe_experts_nvfp4",
        } <= names
        for k in ix["kernels"]:
            ptx = (out / f"sm_{sm}" / k["ptx"]).read_text()
            assert ptx_target(ptx) == k["target"] == f"sm_{sm}a"
            assert f".entry {k['entry']}(" in ptx
            assert (out / f"sm_{sm}" / k["cubin"]).stat().st_size > 0
            assert k["hidden_params"] in (0, 2)  # triton >= 3.3 appends global/profile scratch pointers
            assert k["global_scratch_size"] == 0  # ... which these kernels never dereference
        mamba = next(k for k in ix["kernels"] if k["name"] == "mamba_state_update_bf16_statef32")
        assert mamba["constexprs"] == {
            "K": 4,
            "BLOCK_K": 4,
            "BLOCK_P": 16,
            "BLOCK_N": 16,
            "KEEP_STEPS": False,
        }
        assert mamba["grid"] == ml.GRID_RULE and mamba["scalars"] == list(ml.SCALARS)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("sm", [100, 90])
def test_cuobjdump_names_the_architecture(compiled, sm):
    out, index = compiled
    for k in index[f"sm_{sm}"]["kernels"][-2:]:  # routing + permutation: small cubins, quick to disassemble
        sass = disassemble(out / f"sm_{sm}" / k["cubin"])
        assert sass_arch(sass) == f"sm_{sm}a"
        assert f"Function : {k['entry']}" in sass


def test_recompile_replaces_atomically(compiled):
    out, _ = compiled
    r = CliRunner().invoke(
        __import__("trtllm_nemotron.cli", fromlist=["main"]).main,
        ["compile-plugins", "--sm", "90", "--out", str(out), "--config", "tiny"],
    )
    assert r.exit_code == 0, r.output
    assert "sm_90: 8 kernels (sm_90a" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["sm_100", "sm_90"]


def test_unsupported_sm(tmp_path):
    with pytest.raises(PluginError, match="unsupported SM"):
        compile_all(tmp_path, (75,))


class Sym:
    """Stands in for a TensorRT shape expression: only * and the given cdiv may be applied to it."""

    def __init__(self, name):
        self.name = name

    def __mul__(self, other):
        return Sym(f"({self.name}*{getattr(other, 'name', other)})")

    __rmul__ = __mul__

    def __repr__(self):
        return self.name


def test_launch_rules_accept_symbolic_sizes():
    batch, T = Sym("batch"), Sym("T")
    spec = ml.launch_spec(batch=batch, T=T, H=128, P=64, N=128, G=8, K=4, keep_steps=False)
    assert spec.grid == (batch, 128, 4)  # heads x head-dim blocks of 16 (N = 128)
    assert spec.scalars == (T, 128, 64, 128, 8, 128 * 64 + 2 * 8 * 128)
    assert list(spec.signature)[: len(ml.INPUTS)] == list(ml.INPUTS)
    rs = rl.route_spec(T=T, E=512, top_k=22, cdiv=lambda a, b: f"cdiv({a},{b})")
    assert rs.grid == ("cdiv(T,4)", 1, 1) and rs.scalars == (T, 512)
    assert rl.perm_spec(T=T, E=512, top_k=22).scalars[0].name == "(T*22)"
    xs = xl.launch_spec(
        T=T, E=512, X=1024, F=2688, k=22, nvfp4=True, weight_dtype="int8", cdiv=lambda a, b: f"cdiv({a},{b})"
    )
    assert xs.grid == (512, "cdiv(T,16)", 4) and xs.scalars == (22, 512, 1024, 2688)
    assert list(xs.signature)[: len(xl.INPUTS_NVFP4)] == list(xl.INPUTS_NVFP4)


def test_aot_launch_is_what_aot_impl_returns():
    """The TensorRT-free part of `@trtp.aot_impl`: kernel name, PTX, grid, block, extra scalar args."""
    spec = ml.launch_spec(batch=3, T=2, H=4, P=6, N=5, G=2, K=4, keep_steps=True)
    launch = aot_launch("plugins.mamba_state_update.kernel", spec, sm=90)
    assert launch.kernel_name == b"_mamba_state_update_kernel"
    assert b".target sm_90a" in launch.ptx and b".entry _mamba_state_update_kernel(" in launch.ptx
    assert launch.grid == (3, 4, 1)
    assert launch.block == (spec.num_warps * 32, 1, 1)
    assert launch.extra_args == (2, 4, 6, 5, 2, 4 * 6 + 2 * 2 * 5)
