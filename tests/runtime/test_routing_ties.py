"""Routing ties: every implementation of the noaux_tc router picks the LOWER expert (and group) index among
equal choice values, as the spec and plugins/latent_moe_routing/reference.py define it.

Implementations pinned: the model's router (`model.ops.route`, what the eager/CUDA path runs, on the
reference op), the plugin reference itself, the Triton kernel under the interpreter
(TRTLLM_NEMOTRON_KERNELS=interpret), and the native C++ step's `route` (step.cpp, through `native.route`).
Logits drawn from three values make exact ties in almost every row.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from plugins.latent_moe_routing.reference import latent_moe_routing_ref

E, TOP_K = 16, 4
GROUPINGS = [(1, 1), (4, 2)]  # (n_group, topk_group)


def _model_route(logits, bias, n_group, topk_group, monkeypatch):
    from trtllm_nemotron.model.ops import route

    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "reference")
    return route(
        logits,
        bias,
        top_k=TOP_K,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    )


def _plugin_reference(logits, bias, n_group, topk_group, monkeypatch):
    w, idx, _, _ = latent_moe_routing_ref(logits, bias, TOP_K, n_group, topk_group, True, 2.5)
    return w, idx


def _triton_interpreted(logits, bias, n_group, topk_group, monkeypatch):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (the kernel's tie rule is pinned where it is)")
    from plugins.latent_moe_routing import latent_moe_routing

    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "interpret")
    w, idx, _, _ = latent_moe_routing(
        logits,
        bias,
        top_k=TOP_K,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    )
    return w, idx


def _native(logits, bias, n_group, topk_group, monkeypatch):
    from trtllm_nemotron.runtime import native

    return native.route(
        logits,
        bias,
        top_k=TOP_K,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    )


IMPLS = {
    "model": _model_route,
    "plugin-reference": _plugin_reference,
    "triton-interpret": _triton_interpreted,
    "native": _native,
}


def test_the_tie_rule_by_hand(monkeypatch):
    """One row worked out by hand: choice 2 at experts 0, 2, 10, 11, 15 -> the four lowest of them; with
    4 groups of 4 keeping 2, groups 0 (2+2) and 2 (2+2) tie with 3 (2+1)? no: group 3 is {12..15} = 0,0,1,2
    -> 3; so groups 0 and 2 (score 4) are kept and the experts are 0, 2, 10, 11 again."""
    logits = torch.tensor([[2.0, 0, 2, 0, 1, 0, 1, 1, 1, 0, 2, 2, 0, 0, 1, 2]])
    bias = torch.zeros(E)
    for name, impl in IMPLS.items():
        for ng, tg in GROUPINGS:
            _, idx = impl(logits, bias, ng, tg, monkeypatch)
            assert idx.long().tolist() == [[0, 2, 10, 11]], (name, ng, tg)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("grouping", GROUPINGS, ids=lambda g: f"groups{g[0]}x{g[1]}")
def test_ties_go_to_the_lower_expert_index(impl, grouping, monkeypatch):
    ng, tg = grouping
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (64, E), generator=g).float()
    bias = torch.zeros(E)
    bias[5] = 0.5  # one biased expert: ties among the rest, the bias still decides the choice
    want_w, want_idx, _, _ = latent_moe_routing_ref(logits, bias, TOP_K, ng, tg, True, 2.5)
    w, idx = IMPLS[impl](logits, bias, ng, tg, monkeypatch)
    assert torch.equal(idx.long(), want_idx.long()), impl
    torch.testing.assert_close(w.float(), want_w, rtol=1e-6, atol=1e-6)
