"""Parity with HF transformers 5.23 `NemotronHForCausalLM` (fp32, CPU) on random checkpoints it saved itself.

`clamp_dt_min="prefill_only"` reproduces HF >= 5.15 (dt clamped at time_step_min in the chunked scan only),
so logits must agree to 1e-4 (measured ~2e-6); `clamp_dt_min=False` (production semantics) must differ.
"""

from __future__ import annotations

import pytest
import torch

from tests.model.hf_helpers import load_ours_from_hf_dir, make_hf_model, save_hf

TOL = 1e-4

CASES = {
    # LatentMoE + grouped routing (8 experts, 4 groups, topk_group 2) + a dense `-` layer, M * E -
    "latent_grouped": dict(),
    # plain MoE (no latent), n_group 1, MQA (1 kv head), one Mamba group, k=3 of 6 experts, no conv bias
    "plain_mqa": dict(
        layers_block_type=["full_attention", "linear_attention", "moe", "linear_attention", "moe"],
        num_key_value_heads=1,
        n_groups=1,
        mamba_num_heads=6,
        mamba_head_dim=4,
        n_routed_experts=6,
        num_experts_per_tok=3,
        moe_latent_size=None,
        n_group=1,
        topk_group=1,
        use_conv_bias=False,
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        chunk_size=4,
    ),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    hf = make_hf_model(seed=3, **CASES[request.param])
    d = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return request.param, hf, d


def _ids(batch, T, vocab=96, seed=1):
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_full_forward_matches_hf(pair):
    name, hf, d = pair
    ours = load_ours_from_hf_dir(d, clamp_dt_min="prefill_only")
    ids = _ids(3, 37)  # 37 tokens: more than two chunks of 8 (and nine of 4), padded last chunk
    ref = hf(ids).logits
    out = ours(ids)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOL, name
    assert ref.abs().max().item() > 0.5  # the case is not trivially small


@torch.no_grad()
def test_clamp_flag_changes_the_result(pair):
    name, hf, d = pair
    ids = _ids(2, 21)
    ref = hf(ids).logits
    ours = load_ours_from_hf_dir(d, clamp_dt_min=False)
    diff = (ours(ids) - ref).abs().max().item()
    assert diff > 1e-3, f"{name}: dt < time_step_min occurs, so no clamp must differ from HF (got {diff})"
    ours_always = load_ours_from_hf_dir(d, clamp_dt_min=True)
    assert (ours_always(ids) - ref).abs().max().item() <= TOL  # prefill: True == prefill_only


@torch.no_grad()
def test_cached_decode_matches_hf_decode(pair):
    name, hf, d = pair
    ids = _ids(2, 26, seed=2)
    T0 = 19
    out = hf(ids[:, :T0], use_cache=True)
    pkv, steps = out.past_key_values, [out.logits]
    for t in range(T0, ids.shape[1]):
        o = hf(ids[:, t : t + 1], past_key_values=pkv, use_cache=True)
        pkv = o.past_key_values
        steps.append(o.logits)
    hf_dec = torch.cat(steps, 1)

    ours = load_ours_from_hf_dir(d, clamp_dt_min="prefill_only")  # HF decode does not clamp: same here
    cache = ours.allocate_cache(2, 32)
    mine = [ours(ids[:, :T0], cache)] + [ours(ids[:, t : t + 1], cache) for t in range(T0, ids.shape[1])]
    assert (torch.cat(mine, 1) - hf_dec).abs().max().item() <= TOL, name
    assert cache.lengths.tolist() == [26, 26]


@torch.no_grad()
def test_cached_decode_equals_full_forward_without_clamp(pair):
    name, _, d = pair
    ours = load_ours_from_hf_dir(d, clamp_dt_min=False)
    ids = _ids(2, 30, seed=4)
    full = ours(ids)
    cache = ours.allocate_cache(2, 40)
    parts = [ours(ids[:, :17], cache)]
    parts += [ours(ids[:, t : t + 1], cache) for t in range(17, 24)]
    parts.append(ours(ids[:, 24:], cache))  # a multi-token append from a carried state (chunked path)
    assert (torch.cat(parts, 1) - full).abs().max().item() <= TOL, name
