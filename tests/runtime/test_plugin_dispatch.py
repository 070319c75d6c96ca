"""When the plugin kernels are meant to run (CUDA tensors, or TRTLLM_NEMOTRON_KERNELS=interpret) the runtime
takes the eager backend, whose network calls the plugin ops (`model/ops.py`) for decode, routing and the MTP
verify step (multi-token mode), and gives the same greedy tokens as the default (native) CPU path."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")


def test_interpret_mode_uses_plugins_same_tokens(tmp_path, monkeypatch):
    from trtllm_nemotron.checkpoint.tiny import make_tiny
    from trtllm_nemotron.model import ops
    from trtllm_nemotron.runtime import Engine, SamplingParams

    d = make_tiny(tmp_path / "m", seed=0)
    prompt = [1, 5, 9, 2]
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)

    def run(mtp: int) -> list[int]:
        eng = Engine.load(d, mtp=mtp, max_batch_size=1, max_seq_len=32)
        return list(eng.generate(prompt, params).token_ids)

    monkeypatch.delenv("TRTLLM_NEMOTRON_KERNELS", raising=False)
    want = {mtp: run(mtp) for mtp in (0, 2)}

    calls = {"mamba_state_update": 0, "latent_moe_routing": 0, "keep_steps": 0}
    for name in ("mamba_state_update", "latent_moe_routing"):
        real = getattr(ops, name)

        def counted(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            calls["keep_steps"] += bool(kw.get("keep_steps"))
            return _real(*a, **kw)

        monkeypatch.setattr(ops, name, counted)
    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "interpret")
    for mtp in (0, 2):
        assert run(mtp) == want[mtp], mtp
    # decode steps, MoE routing and the MTP verify step (multi-token mode) all went through the plugins
    assert calls["mamba_state_update"] > 0 and calls["latent_moe_routing"] > 0, calls
    assert calls["keep_steps"] > 0, calls
