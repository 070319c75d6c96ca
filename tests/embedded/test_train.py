"""The training recipe: architecture constraints, fast MoE path == reference, bias update, a 2-step run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trtllm_nemotron.config import expected_tensors, preset
from trtllm_nemotron.errors import ConfigError
from trtllm_nemotron.model.loader import load_model, model_from_config
from trtllm_nemotron.model.moe import MoE
from trtllm_nemotron.train.data import DataRecipe
from trtllm_nemotron.train.fast import routed_experts_sorted
from trtllm_nemotron.train.train import (
    RouterLoads,
    TrainConfig,
    linear_in_dims_not_multiple,
    lr_at,
    tiny_model_config,
    train_tiny,
)


def test_tiny_model_config_is_super_shaped_and_nvfp4_ready():
    cfg = tiny_model_config(4096)
    assert (
        set(cfg.pattern) == {"M", "E", "*"} and cfg.mtp_pattern == "*E" and cfg.num_nextn_predict_layers == 1
    )
    assert cfg.moe_latent_size and cfg.n_group > 1 and cfg.topk_group < cfg.n_group
    assert linear_in_dims_not_multiple(cfg, 16) == {}
    n = sum(math.prod(s.shape) for s in expected_tensors(cfg).values())
    assert 3e6 <= n <= 10e6, n
    with pytest.raises(ConfigError, match="multiples of 16"):
        tiny_model_config(4096, hidden_size=200)


def test_lr_schedule():
    tc = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(1e-4)
    assert lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(99, tc) == pytest.approx(1e-4)
    assert all(lr_at(s, tc) >= lr_at(s + 1, tc) for s in range(10, 99))


def test_fast_routed_experts_equal_reference():
    torch.manual_seed(0)
    ref_model = model_from_config(preset("tiny"), seed=1)
    model = model_from_config(preset("tiny"), seed=1, moe_routed=routed_experts_sorted)
    ref_moe = next(m for m in ref_model.modules() if isinstance(m, MoE))
    moe = next(m for m in model.modules() if isinstance(m, MoE))
    x = torch.randn(3, 37, preset("tiny").hidden_size, requires_grad=True)
    ref = ref_moe(x)
    g_ref = torch.autograd.grad(ref.square().sum(), [x, *ref_moe.parameters()], allow_unused=True)
    out = moe(x)
    g = torch.autograd.grad(out.square().sum(), [x, *moe.parameters()], allow_unused=True)
    print("max |out - ref|", (out - ref).abs().max().item())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    assert len(moes) == preset("tiny").pattern.count("E") + 1  # + the MTP block's E
    assert all(m.routed is routed_experts_sorted for m in moes)
    assert all(m.routed is not routed_experts_sorted for m in ref_model.modules() if isinstance(m, MoE))


def test_bias_update_moves_toward_balance():
    model = model_from_config(preset("tiny"), seed=0)
    loads = RouterLoads(model)
    loads.active = True
    with torch.no_grad():
        model(torch.randint(0, 512, (2, 16)))
    counts = [c.clone() for c in loads.counts if c is not None]
    before = [r.e_score_correction_bias.clone() for r in loads.routers]
    ratio = loads.update_bias(0.01)
    loads.remove()
    assert ratio >= 1.0 and counts
    r0, c0 = loads.routers[0], counts[0].float()
    delta = r0.e_score_correction_bias - before[0]
    torch.testing.assert_close(delta[c0 > c0.mean()], torch.full_like(delta[c0 > c0.mean()], -0.01))
    torch.testing.assert_close(delta[c0 < c0.mean()], torch.full_like(delta[c0 < c0.mean()], 0.01))


def test_two_step_training_run_writes_a_loadable_checkpoint(tmp_path):
    tc = TrainConfig(
        steps=2,
        batch_size=2,
        seq_len=32,
        vocab_size=512,
        warmup_steps=1,
        eval_every=1,
        eval_windows=2,
        final_eval_windows=2,
        accept_prompts=1,
        accept_prompt_len=8,
        accept_gen_tokens=6,
        completion_tokens=3,
        threads=1,
    )
    cfg = tiny_model_config(512, hidden_size=64, pattern="ME*")
    out = tmp_path / "ckpt"
    log = train_tiny(out, tc, DataRecipe(max_chars=40_000), model_config=cfg, progress=False)
    assert len(log["train"]) == 2 and len(log["heldout"]) == 2
    assert (
        log["final"]["unigram"]["ppl"] > 1
        and 1.0 <= log["final"]["mtp_acceptance"]["acceptance_length"] <= 4.0
    )
    saved = json.loads((out / "training_log.json").read_text())
    assert saved["corpus"]["sha256"] == log["corpus"]["sha256"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".ckpt*"))  # no temp dirs or state files left behind
    model = load_model(out, dtype=torch.float32)
    assert model.mtp is not None
    assert model(torch.tensor([[5, 6, 7]])).shape == (1, 3, 512)


def test_retraining_is_bit_reproducible(tmp_path):
    from safetensors.torch import load_file

    tc = TrainConfig(
        steps=2,
        batch_size=2,
        seq_len=32,
        vocab_size=512,
        warmup_steps=1,
        eval_every=2,
        eval_windows=1,
        final_eval_windows=1,
        accept_prompts=1,
        accept_prompt_len=8,
        accept_gen_tokens=4,
        completion_tokens=2,
        threads=1,
        seed=7,
    )
    cfg = tiny_model_config(512, hidden_size=64, pattern="ME*")
    logs = [
        train_tiny(tmp_path / name, tc, DataRecipe(max_chars=40_000), model_config=cfg, progress=False)
        for name in ("a", "b")
    ]
    assert [r["loss"] for r in logs[0]["train"]] == [r["loss"] for r in logs[1]["train"]]
    a, b = (load_file(str(tmp_path / n / "model-00001-of-00001.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
