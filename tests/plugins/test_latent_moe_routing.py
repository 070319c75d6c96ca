"""latent_moe_routing: reference == HF transformers' NemotronH router; Triton kernels == reference (exact
indices, counts, permutation; ties resolve to the lower expert index)."""

from __future__ import annotations

import pytest
import torch

from plugins.latent_moe_routing.reference import latent_moe_routing_ref
from trtllm_nemotron.errors import PluginError

SUPER = dict(E=512, top_k=22, n_group=1, topk_group=1, scale=5.0)
NANO = dict(E=128, top_k=6, n_group=1, topk_group=1, scale=2.5)
TINY = dict(E=16, top_k=4, n_group=4, topk_group=2, scale=2.5)  # grouped routing (the tiny preset's)


def make(T, E, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many exact ties in choice, and in group scores
        return (torch.randint(-2, 3, (T, E), generator=g) * 0.5).float(), torch.zeros(E)
    return torch.randn(T, E, generator=g) * 2, torch.randn(E, generator=g) * 0.05


def ref(logits, bias, c, norm=True):
    return latent_moe_routing_ref(logits, bias, c["top_k"], c["n_group"], c["topk_group"], norm, c["scale"])


@pytest.mark.parametrize("c", [TINY, NANO], ids=["grouped", "nano"])
def test_reference_matches_hf_router(c):
    """Spec §4.4 via the installed transformers NemotronHTopkRouter (tie-free data; HF's order is unsorted)."""
    from transformers import NemotronHConfig as HFConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHTopkRouter

    T, hidden = 9, 32
    hf_cfg = HFConfig(
        hidden_size=hidden,
        n_routed_experts=c["E"],
        num_experts_per_tok=c["top_k"],
        n_group=c["n_group"],
        topk_group=c["topk_group"],
        norm_topk_prob=True,
        routed_scaling_factor=c["scale"],
    )
    router = NemotronHTopkRouter(hf_cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        router.weight.copy_(torch.randn(c["E"], hidden, generator=g))
        router.e_score_correction_bias.copy_(torch.randn(c["E"], generator=g) * 0.05)
    x = torch.randn(T, hidden, generator=g)
    logits, hf_w, hf_idx = router(x)
    w, idx, counts, perm = ref(logits, router.e_score_correction_bias, c)
    order_hf, order = hf_idx.argsort(-1), idx.long().argsort(-1)
    torch.testing.assert_close(idx.long().gather(1, order), hf_idx.gather(1, order_hf), rtol=0, atol=0)
    torch.testing.assert_close(w.gather(1, order), hf_w.gather(1, order_hf), rtol=1e-6, atol=1e-7)


def test_reference_tie_rule_and_grouping_outputs():
    logits, bias = torch.zeros(2, 8), torch.zeros(8)
    w, idx, counts, perm = latent_moe_routing_ref(logits, bias, 3, routed_scaling_factor=2.0)
    assert idx.tolist() == [[0, 1, 2], [0, 1, 2]]  # all equal: lowest indices, in order
    torch.testing.assert_close(w, torch.full((2, 3), 2.0 / 3))
    assert counts.tolist() == [2, 2, 2, 0, 0, 0, 0, 0]
    assert perm.tolist() == [0, 3, 1, 4, 2, 5]  # assignment ids t*k+j grouped by expert, stable
    # group tie: groups {0,1} and {2,3} score equal -> group 0 wins with topk_group=1
    w, idx, _, _ = latent_moe_routing_ref(torch.zeros(1, 4), torch.zeros(4), 2, n_group=2, topk_group=1)
    assert idx.tolist() == [[0, 1]]


def _check_kernel(monkeypatch, logits, bias, c, norm=True):
    from plugins.latent_moe_routing import latent_moe_routing

    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "interpret")
    got = latent_moe_routing(
        logits,
        bias,
        top_k=c["top_k"],
        n_group=c["n_group"],
        topk_group=c["topk_group"],
        norm_topk_prob=norm,
        routed_scaling_factor=c["scale"],
    )
    want = ref(logits, bias, c, norm)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    for name, a, b in zip(("idx", "counts", "perm"), got[1:], want[1:], strict=True):
        assert a.dtype == torch.int32, name
        assert torch.equal(a, b), f"{name} differs:\n{a}\n{b}"


@pytest.mark.parametrize(
    "T,c,ties,norm",
    [(5, TINY, False, True), (6, TINY, True, False), (3, SUPER, False, True), (2, SUPER, True, True),
     (7, NANO, False, True), (17, NANO, True, True)],
    ids=["grouped", "grouped_ties_nonorm", "super", "super_ties", "nano", "nano_ties_2blocks"],
)  # fmt: skip
def test_interpreter_matches_reference(monkeypatch, T, c, ties, norm):
    logits, bias = make(T, c["E"], seed=T, ties=ties)
    _check_kernel(monkeypatch, logits, bias, c, norm)


def test_validation_errors():
    from plugins.latent_moe_routing import latent_moe_routing

    with pytest.raises(PluginError, match="top_k"):  # 2 groups of 4 leave 8 experts < 9
        latent_moe_routing(torch.zeros(1, 16), torch.zeros(16), top_k=9, n_group=4, topk_group=2)
    with pytest.raises(PluginError, match="bias"):
        latent_moe_routing(torch.zeros(1, 16), torch.zeros(8), top_k=2)


def test_custom_op_registered_with_fake(monkeypatch):
    import plugins

    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "reference")
    plugins.register_ops()
    logits, bias = make(4, 16)
    torch.library.opcheck(
        torch.ops.trtllm_nemotron.latent_moe_routing.default, (logits, bias, 4, 4, 2, True, 2.5)
    )


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 64, 256, 3000])
@pytest.mark.parametrize("c", [SUPER, NANO], ids=["super", "nano"])
def test_cuda_kernels_match_reference(T, c):
    from plugins.latent_moe_routing import latent_moe_routing

    logits, bias = make(T, c["E"], seed=T)
    logits, bias = logits.cuda(), bias.cuda()
    got = latent_moe_routing(logits, bias, top_k=c["top_k"], routed_scaling_factor=c["scale"])
    want = ref(logits, bias, c)
    # the GPU's exp may differ from torch's by an ulp or two, which can flip a near-tie: require almost all
    # rows identical, and exact weights on those rows
    rows = (got[1] == want[1]).all(1)
    assert rows.float().mean() > 0.99
    torch.testing.assert_close(got[0][rows], want[0][rows], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[2], torch.bincount(got[1].flatten().long(), minlength=c["E"]).int())
    assert torch.equal(got[3], torch.sort(got[1].flatten(), stable=True).indices.int())


@pytest.mark.parametrize("c", [TINY, SUPER], ids=["grouped", "super"])
def test_matches_model_ops_route(monkeypatch, c):
    """The model's `trtllm_nemotron.model.ops.route`, running the Triton kernels under the interpreter,
    selects the same experts with the same weights as the reference (with the CPU default it would run
    the reference itself)."""
    from trtllm_nemotron.model.ops import route

    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "interpret")
    logits, bias = make(6, c["E"], seed=3)
    w, idx, _, _ = ref(logits, bias, c)
    mw, midx = route(
        logits,
        bias,
        top_k=c["top_k"],
        n_group=c["n_group"],
        topk_group=c["topk_group"],
        norm_topk_prob=True,
        routed_scaling_factor=c["scale"],
    )
    o, mo = idx.long().argsort(-1), midx.argsort(-1)
    assert torch.equal(idx.long().gather(1, o), midx.gather(1, mo))
    torch.testing.assert_close(w.gather(1, o), mw.gather(1, mo), rtol=1e-6, atol=1e-7)


def test_interpreter_bf16_logits_are_upcast(monkeypatch):
    logits, bias = make(5, 128, seed=5)
    _check_kernel(monkeypatch, logits.to(torch.bfloat16), bias, NANO)
