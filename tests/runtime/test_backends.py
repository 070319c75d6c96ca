"""Both step backends through the `StepBackend` protocol: prefill, decode, verify + commit (the one
verify-and-rollback mechanism), MTP and the greedy MTP iteration, against the uncached reference network and
against each other.

Configs cover what the backends branch on: LatentMoE with grouped routing and a shared expert (the tiny
preset), and a variant with a dense `-` MLP, attention / Mamba projection biases, no conv bias, tied
embeddings, no latent projection, no shared expert, one routing group and the dt clamp.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from trtllm_nemotron.config import preset
from trtllm_nemotron.model import model_from_config
from trtllm_nemotron.runtime import BACKENDS, StepBackend

VARIANTS = {
    "tiny": ({}, False),
    "dense-biases-tied": (
        dict(
            pattern="M-*EM",
            attention_bias=True,
            use_bias=True,
            use_conv_bias=False,
            tie_word_embeddings=True,
            moe_latent_size=None,
            n_shared_experts=0,
            n_group=1,
            topk_group=1,
            norm_topk_prob=False,
        ),
        True,
    ),
}
K = 3  # draft tokens


def make_model(name: str):
    over, clamp = VARIANTS[name]
    return model_from_config(preset("tiny").replace(**over), seed=0, clamp_dt_min=clamp)


def make_pool(model, rows: int = 3, cap: int = 48, mtp: int = K):
    """The slot pool's caches (what a backend binds), at an exact capacity."""
    return SimpleNamespace(
        cache=model.allocate_cache(rows, cap), mtp_cache=model.allocate_cache(rows, cap, mtp=True), mtp=mtp
    )


def states(c) -> list[torch.Tensor]:
    return [t.clone() for t in c.tensors() if t.is_floating_point()]


def close(a, b, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=lambda m: f"{what}: {m}")


def run_protocol(backend: str, model) -> dict:
    """One fixed sequence of protocol calls on rows [2, 0]; returns every output and the sequences fed."""
    pool = make_pool(model)
    step = BACKENDS[backend](model, pool)
    assert isinstance(step, StepBackend)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = [2, 0]
    prompt = torch.randint(0, V, (2, 9), generator=g).tolist()
    out: dict = {"pool": pool}
    with torch.inference_mode():
        hs = []
        for b, r in enumerate(rows):
            h = step.prefill(prompt[b], r)
            step.mtp(h[:, :-1], torch.tensor([prompt[b][1:]]), [r], logits=False)
            hs.append(h)
        out["prefill_logits"] = model.logits(torch.cat([h[:, -1] for h in hs]))
        dec = torch.randint(0, V, (2,), generator=g).tolist()
        out["decode_logits"] = step.decode(dec, rows)
        ver = torch.randint(0, V, (2, K + 1), generator=g).tolist()
        _, out["verify_logits"] = step.verify(ver, rows)
        keep = [3, 1]
        step.commit(rows, keep)
        out["lengths_after_commit"] = pool.cache.lengths.tolist()
        out["cache_after_commit"] = copy.deepcopy(pool.cache)
        spec = torch.randint(0, V, (2, K + 1), generator=g).tolist()
        out["spec"] = step.spec_greedy(spec, rows)
        out["lengths_after_spec"] = (pool.cache.lengths.tolist(), pool.mtp_cache.lengths.tolist())
        y, acc, _ = out["spec"]
        out["greedy_next"] = step.decode_greedy([y[b][acc[b]] for b in range(2)], rows)  # the pending tokens
    out["inputs"] = (prompt, dec, ver, keep, spec)
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("backend", ["native", "eager"])
def test_protocol_matches_the_uncached_network(backend, variant):
    model = make_model(variant)
    o = run_protocol(backend, model)
    prompt, dec, ver, keep, spec = o["inputs"]
    with torch.inference_mode():
        for b in range(2):
            # everything row b consumed, uncached: prompt, decoded token, verify tokens, spec tokens
            full = model(torch.tensor([prompt[b] + [dec[b]] + ver[b]]))[0]
            close(o["prefill_logits"][b], full[8], "prefill logits")
            close(o["decode_logits"][b], full[9], "decode logits")
            close(o["verify_logits"][b], full[10:], "verify logits")
            kept = prompt[b] + [dec[b]] + ver[b][: keep[b]]
            full = model(torch.tensor([kept + spec[b]]))[0]
            y, acc, _ = o["spec"]
            assert y[b] == full[len(kept) :].argmax(-1).tolist(), "spec targets after the rollback"
            a = 0
            while a < K and spec[b][1 + a] == y[b][a]:
                a += 1
            assert acc[b] == a
            n = len(kept) + acc[b] + 1
            assert o["lengths_after_spec"][0][[2, 0][b]] == n and o["lengths_after_spec"][1][[2, 0][b]] == n
            nxt = model(torch.tensor([kept + spec[b][: acc[b] + 1] + [y[b][acc[b]]]]))[0, -1].argmax()
            assert o["greedy_next"][b] == int(nxt), "decode after the MTP iteration"
    assert o["lengths_after_commit"] == [9 + 1 + keep[1], 0, 9 + 1 + keep[0]]
    # the committed state after commit equals a prefill of exactly the kept tokens
    ref = make_pool(model)
    with torch.inference_mode():
        for b, r in enumerate([2, 0]):
            model.hidden_states(
                torch.tensor([prompt[b] + [dec[b]] + ver[b][: keep[b]]]), ref.cache, rows=torch.tensor([r])
            )
    got = o["cache_after_commit"]
    for r in (2, 0):
        n = int(got.lengths[r])  # KV past the committed length is the rejected tokens' (masked by the length)
        for i, (k, v) in got.kv.items():
            close(k[r, :, :n], ref.cache.kv[i][0][r, :, :n], "K after commit")
            close(v[r, :, :n], ref.cache.kv[i][1][r, :, :n], "V after commit")
        for i in got.ssm:
            close(got.ssm[i][r], ref.cache.ssm[i][r], "SSM state after commit")
            close(got.conv[i][r], ref.cache.conv[i][r], "conv state after commit")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_native_and_eager_agree(variant):
    model = make_model(variant)
    n, e = run_protocol("native", model), run_protocol("eager", model)
    for k in ("prefill_logits", "decode_logits", "verify_logits"):
        close(n[k], e[k], k)
    assert n["spec"] == e["spec"], "greedy MTP iteration: targets, accepted, drafts"
    assert n["greedy_next"] == e["greedy_next"]
    assert n["lengths_after_spec"] == e["lengths_after_spec"]
    for a, b in zip(states(n["pool"].cache), states(e["pool"].cache), strict=True):
        close(a, b, "backbone cache")
    # MTP KV: equal through the committed length (the native step skips the MTP entries after the last
    # accepted position, whose KV lies past it and is overwritten before it is read)
    mlen = n["pool"].mtp_cache.lengths
    for a, b in zip(states(n["pool"].mtp_cache), states(e["pool"].mtp_cache), strict=True):
        for r in (2, 0):
            close(a[r, :, : int(mlen[r])], b[r, :, : int(mlen[r])], "MTP KV")


def test_commit_must_follow_a_verify_of_the_same_rows():
    from trtllm_nemotron.errors import RuntimeStateError

    model = make_model("tiny")
    for name in ("native", "eager"):
        step = BACKENDS[name](model, make_pool(model))
        step.prefill([1, 2, 3], 0)
        step.prefill([1, 2, 3], 1)
        step.verify([[4, 5], [4, 5]], [0, 1])
        with pytest.raises(RuntimeStateError, match="commit"):
            step.commit([1], [1])
