"""The reference network runs its decode step and its routing through the plugins: under
TRTLLM_NEMOTRON_KERNELS=interpret the whole tiny model (prefill + cached decode) runs the Triton kernels in
the interpreter and must equal the run on the torch references."""

from __future__ import annotations

import torch

from trtllm_nemotron.config import preset
from trtllm_nemotron.model import model_from_config
from trtllm_nemotron.model import ops as model_ops


def _run(model, ids, steps):
    cache = model.allocate_cache(ids.shape[0], ids.shape[1] + steps)
    out = [model(ids, cache)[:, -1]]
    nxt = out[-1].argmax(-1, keepdim=True)
    for _ in range(steps):
        out.append(model(nxt, cache)[:, -1])
        nxt = out[-1].argmax(-1, keepdim=True)
    return torch.stack(out, 1), cache


@torch.no_grad()
def test_whole_model_interpret_equals_reference(monkeypatch):
    model = model_from_config(preset("tiny"), seed=1)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "reference")
    ref, ref_cache = _run(model, ids, 2)
    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "interpret")
    got, got_cache = _run(model, ids, 2)
    assert (got - ref).abs().max().item() < 1e-4
    for a, b in zip(ref_cache.ssm.values(), got_cache.ssm.values(), strict=True):
        assert (a - b).abs().max().item() < 1e-5


@torch.no_grad()
def test_dt_clamp_expressed_on_raw_dt():
    """clamp(softplus(u + b), m) == softplus(max(u, softplus^-1(m) - b)): the clamp needs no plugin support."""
    g = torch.Generator().manual_seed(0)
    H, P, N, G, K, C = 4, 8, 4, 2, 4, 4 * 8 + 2 * 2 * 4
    args = dict(
        conv_weight=torch.randn(C, K, generator=g),
        conv_bias=torch.randn(C, generator=g),
        dt_bias=torch.randn(H, generator=g),
        A=-torch.rand(H, generator=g) - 0.5,
        D=torch.randn(H, generator=g),
    )
    xbc = torch.randn(3, 1, C, generator=g)
    dt = torch.randn(3, 1, H, generator=g) * 4 - 6  # mostly softplus(dt) < 1e-3
    slots = torch.arange(3, dtype=torch.int32)
    outs = []
    for dt_min in (None, 1e-3):
        conv, ssm = torch.zeros(3, C, K - 1), torch.zeros(3, H, P, N)
        y, _, _ = model_ops.mamba_decode_step(
            xbc,
            dt,
            conv,
            ssm,
            args["conv_weight"],
            args["conv_bias"],
            args["dt_bias"],
            args["A"],
            args["D"],
            slots,
            n_groups=G,
            dt_min=dt_min,
        )
        outs.append((y, ssm.clone()))
    # by hand: the state after one step from zero is dt * x ⊗ B, so it scales with the (clamped) dt
    d = torch.nn.functional.softplus(dt + args["dt_bias"]).clamp(min=1e-3)[:, 0]  # [3, H]
    d0 = torch.nn.functional.softplus(dt + args["dt_bias"])[:, 0]
    ratio = outs[1][1].flatten(2).abs().sum(-1) / outs[0][1].flatten(2).abs().sum(-1)  # [3, H]
    assert torch.allclose(ratio, d / d0, rtol=1e-4)
    assert (outs[1][0] - outs[0][0]).abs().max() > 1e-3  # the clamp changed y
