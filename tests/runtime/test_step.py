"""The runtime step against the reference network: decode, multi-token verify with recorded states, MoE paths."""

from __future__ import annotations

import pytest
import torch

from trtllm_nemotron.model import model_from_config
from trtllm_nemotron.runtime import step as S


@pytest.fixture(scope="module")
def model():
    from trtllm_nemotron.config import preset

    return model_from_config(preset("tiny"), seed=0)


@pytest.mark.parametrize("mode", ["gather", "reduction", "dense", "grouped"])
def test_moe_paths_match_the_reference_moe(model, monkeypatch, mode):
    fw = S.FlatWeights(model)
    layer = next(L for L in fw.layers if L.char == "E")
    ref_moe = model.backbone.layers[layer.cache_idx].mixer
    n = 2 if mode in ("gather", "reduction") else 9  # tiny preset: k=4 of E=16: 2 tokens gather, 9 do not
    monkeypatch.setattr(S, "DENSE_MOE_MACS", 0 if mode == "grouped" else 2**40)
    monkeypatch.setattr(S, "GATHER_REDUCTION_MIN", 0 if mode == "reduction" else 2**40)
    x = torch.randn(1, n, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(S._moe(layer, x), ref_moe(x), rtol=1e-5, atol=1e-6)


def test_decode_and_recorded_verify_match_the_full_forward(model):
    fw = S.FlatWeights(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    rows = torch.arange(2)
    with torch.no_grad():
        full = model(ids)
        c = model.allocate_cache(2, 32)
        model(ids[:, :8], c)
        _, logits, rec = S.forward_step(
            fw, ids[:, 8:12], rows, c.lengths.clone(), c.kv, c.conv, c.ssm, 32, True
        )
        torch.testing.assert_close(logits, full[:, 8:], rtol=1e-4, atol=1e-5)
        # commit the state after token 1 (row 0) and token 3 (row 1) == prefilling 10 and 12 tokens
        S.commit_mamba(rec, c.conv, c.ssm, rows, torch.tensor([1, 3]))
        ref = model.allocate_cache(2, 32)
        model(ids[:1, :10], ref, rows=torch.tensor([0]))
        model(ids[1:, :12], ref, rows=torch.tensor([1]))
        for i in ref.ssm:
            torch.testing.assert_close(c.ssm[i], ref.ssm[i], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(c.conv[i], ref.conv[i], rtol=1e-5, atol=1e-6)
