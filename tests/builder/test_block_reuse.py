"""KV block reuse in the TensorRT-LLM YAML: off for NemotronH unless the installed TensorRT-LLM supports it.

TensorRT-LLM cannot be installed on CPU hosts, so besides the real "not importable" case the probe is run
against two small stand-in packages placed on `sys.modules` -- one whose NemotronH model defaults force block
reuse off (as modeling_nemotron_h.py does at 00620eb0), one whose defaults no longer do -- to pin the decision
logic; what a real TensorRT-LLM returns is read from its `NemotronHForCausalLM.get_model_defaults`.
"""

from __future__ import annotations

import sys
import types

import pytest

from builder.plan import plan_for_build
from builder.trtllm_config import hybrid_block_reuse, llm_api_config
from trtllm_nemotron.config import preset

SUPER = preset("super-120b")


def _stand_in(monkeypatch, defaults: dict, version: str) -> None:
    class NemotronHForCausalLM:
        @classmethod
        def get_model_defaults(cls, llm_args):
            return defaults

    names = [
        "tensorrt_llm",
        "tensorrt_llm._torch",
        "tensorrt_llm._torch.models",
        "tensorrt_llm._torch.models.modeling_nemotron_h",
    ]
    mods = {n: types.ModuleType(n) for n in names}
    mods["tensorrt_llm"].__version__ = version
    mods["tensorrt_llm._torch.models.modeling_nemotron_h"].NemotronHForCausalLM = NemotronHForCausalLM
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)


def _yaml_reuse() -> bool:
    plan = plan_for_build(SUPER, "b200", recipe="nvfp4-super", mtp=3)
    return llm_api_config(SUPER, "b200", recipe="nvfp4-super", mtp=3, plan=plan, expert_format="nvfp4")[
        "kv_cache_config"
    ]["enable_block_reuse"]


def test_without_tensorrt_llm_block_reuse_stays_off(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as on a CPU host
    ok, why = hybrid_block_reuse()
    assert not ok and "not importable" in why
    assert _yaml_reuse() is False


@pytest.mark.parametrize(
    ("defaults", "expect"),
    [
        ({"kv_cache_config": {"enable_block_reuse": False}}, False),
        ({}, True),
        ({"kv_cache_config": {}}, True),
    ],
)
def test_reuse_follows_the_installed_nemotron_h_defaults(monkeypatch, defaults, expect):
    _stand_in(monkeypatch, defaults, "9.9.9")
    ok, why = hybrid_block_reuse()
    assert ok is expect and "9.9.9" in why
    assert _yaml_reuse() is expect
