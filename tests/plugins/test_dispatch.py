"""Backend choice (TRTLLM_NEMOTRON_KERNELS) and the import tiers: no triton/torch at `import plugins`,
references without triton, interpret mode working even after triton was imported for compilation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plugins import _dispatch
from trtllm_nemotron.errors import PluginError


def test_modes(monkeypatch):
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    assert _dispatch.backend_for("x", "cuda") == "kernel"
    assert _dispatch.backend_for("x", "cpu") == "reference"
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    assert _dispatch.backend_for("x", "cuda") == "reference"
    monkeypatch.setenv(_dispatch.ENV_VAR, "Interpret")
    assert _dispatch.backend_for("x", "cpu") == "interpret"
    monkeypatch.setenv(_dispatch.ENV_VAR, "fast")
    with pytest.raises(PluginError, match="TRTLLM_NEMOTRON_KERNELS"):
        _dispatch.mode()


def _run(code: str, **env: str) -> str:
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_package_import_is_light():
    out = _run("import sys, plugins; print([m for m in ('torch', 'triton', 'tensorrt') if m in sys.modules])")
    assert out.strip() == "[]"


def test_references_and_ops_import_without_triton():
    code = """
import sys
sys.modules['triton'] = None  # any `import triton` now fails
import torch
from plugins.latent_moe_routing import latent_moe_routing
w, idx, counts, perm = latent_moe_routing(torch.zeros(2, 8), torch.zeros(8), top_k=2)
assert idx.tolist() == [[0, 1], [0, 1]], idx
import plugins.mamba_state_update.reference, plugins.latent_moe_routing.op
print('ok')
"""
    assert _run(code, TRTLLM_NEMOTRON_KERNELS="").strip().endswith("ok")


def test_interpret_mode_after_triton_was_imported_for_compilation():
    """The compiled kernel module is imported first (as AOT / CUDA do); interpret mode must still work."""
    code = """
import torch, triton
from triton.runtime.jit import JITFunction
from plugins.latent_moe_routing import kernel as k
assert isinstance(k._latent_moe_routing_kernel, JITFunction)
from plugins.latent_moe_routing import latent_moe_routing
from plugins.latent_moe_routing.reference import latent_moe_routing_ref
logits, bias = torch.randn(5, 16), torch.randn(16) * 0.1
got = latent_moe_routing(logits, bias, top_k=4, n_group=4, topk_group=2)
want = latent_moe_routing_ref(logits, bias, 4, 4, 2)
assert all(torch.equal(a, b) for a, b in zip(got[1:], want[1:]))
assert isinstance(k._latent_moe_routing_kernel, JITFunction)  # the compiled instance is untouched
print('ok')
"""
    assert _run(code, TRTLLM_NEMOTRON_KERNELS="interpret").strip().endswith("ok")


def test_trt_modules_fail_clearly_without_tensorrt():
    code = """
import sys
sys.modules['tensorrt'] = None
try:
    import plugins.trt
except Exception as e:
    print(type(e).__name__, e)
"""
    out = _run(code)
    assert out.startswith("PluginError") and "TensorRT" in out
