"""Network structure, the HybridCache (per-row lengths, rows, verify and commit), MTP (§4.7) by hand,
training (backward), bf16, and load_model on our own, HF-saved and engine-dir checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import trtllm_nemotron
from trtllm_nemotron.config import expected_tensors, preset
from trtllm_nemotron.errors import CheckpointError, RuntimeStateError
from trtllm_nemotron.model import HybridCache, NemotronHForCausalLM, build_model_skeleton, model_from_config
from trtllm_nemotron.model.layers import build_layer

TINY = preset("tiny")  # M E M * E M E, LatentMoE, n_group 4 / topk_group 2, MTP "*E"


@pytest.fixture(scope="module")
def tiny():
    return model_from_config(TINY, seed=0, clamp_dt_min=False)


def _ids(batch, T, seed=0, vocab=512):
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


def test_state_dict_keys_equal_expected_tensors():
    for cfg in (
        TINY,
        preset("nano-30b").replace(pattern="M-E*"),
        TINY.replace(tie_word_embeddings=True),
        TINY.replace(num_nextn_predict_layers=2),
    ):
        model = build_model_skeleton(cfg)
        sd = model.state_dict()
        exp = expected_tensors(cfg)
        assert set(sd) == set(exp)
        assert all(tuple(sd[n].shape) == exp[n].shape for n in exp)
        assert all(sd[n].dtype == torch.float32 for n in exp if exp[n].dtype == "float32")
    m = build_model_skeleton(TINY, dtype=torch.bfloat16)
    assert m.backbone.layers[1].mixer.gate.e_score_correction_bias.dtype == torch.float32
    assert m.backbone.layers[0].mixer.in_proj.weight.dtype == torch.bfloat16
    assert build_layer(TINY, "-").mixer.up_proj.weight.shape == (TINY.intermediate_size, TINY.hidden_size)


def test_model_from_config_is_make_tiny(tmp_path):
    from trtllm_nemotron.checkpoint.tiny import make_tiny

    d = make_tiny(tmp_path / "tiny", seed=7)
    loaded = trtllm_nemotron.load_model(d, dtype=torch.float32, device="cpu")
    fresh = model_from_config(TINY, seed=7)
    a, b = loaded.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    ids = _ids(2, 11)
    assert loaded(ids).shape == (2, 11, TINY.vocab_size)
    assert loaded.mtp_logits(ids).shape == (2, 10, TINY.vocab_size)
    # an engine dir holding the checkpoint under checkpoint/
    eng = tmp_path / "engine"
    (eng).mkdir()
    d.rename(eng / "checkpoint")
    assert torch.equal(trtllm_nemotron.load_model(eng)(ids), loaded(ids))
    bf = trtllm_nemotron.load_model(eng, dtype=torch.bfloat16)
    assert bf.lm_head.weight.dtype == torch.bfloat16
    assert bf.backbone.layers[1].mixer.gate.e_score_correction_bias.dtype == torch.float32


def test_load_model_on_hf_save_pretrained_dir(tmp_path):
    from tests.model.hf_helpers import make_hf_model, save_hf

    hf = make_hf_model(seed=5)
    d = save_hf(hf, tmp_path / "hf")
    ours = trtllm_nemotron.load_model(d, dtype=torch.float32, device="cpu", clamp_dt_min="prefill_only")
    ids = _ids(2, 13, vocab=96)
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= 1e-4


def test_load_model_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        trtllm_nemotron.load_model(tmp_path / "nope")
    from trtllm_nemotron.checkpoint.tiny import random_tensors
    from trtllm_nemotron.checkpoint.writer import save_checkpoint

    cfg = TINY.replace(num_nextn_predict_layers=0)
    tensors = [(n, t) for n, t in random_tensors(cfg) if n != "backbone.norm_f.weight"]
    d = save_checkpoint(tmp_path / "bad", cfg, tensors)
    with pytest.raises(CheckpointError):
        trtllm_nemotron.load_model(d)
    m = trtllm_nemotron.load_model(d, strict=False)  # the missing norm gets the init (ones), not garbage
    assert torch.equal(m.backbone.norm_f.weight, torch.ones(cfg.hidden_size))


@torch.no_grad()
def test_rows_at_different_lengths_decode_together(tiny):
    seqs = [_ids(1, n, seed=n)[0] for n in (5, 12, 17)]
    full = [tiny(torch.cat([s, _ids(1, 4, seed=100 + i)[0]])[None])[0] for i, s in enumerate(seqs)]
    cache = tiny.allocate_cache(4, 32)
    order = [2, 0, 3]  # sequence i lives in cache row order[i]; row 1 stays idle
    for i, s in enumerate(seqs):
        tiny(s[None], cache, rows=torch.tensor([order[i]]))
    assert cache.lengths.tolist() == [12, 0, 5, 17]
    outs = [[] for _ in seqs]
    for step in range(4):
        ids = torch.stack([_ids(1, 4, seed=100 + i)[0, step] for i in range(3)])[:, None]
        logits = tiny(ids, cache, rows=torch.tensor(order))
        for i in range(3):
            outs[i].append(logits[i, 0])
    for i, s in enumerate(seqs):
        got = torch.stack(outs[i])
        assert (got - full[i][len(s) :]).abs().max().item() < 1e-4
    assert cache.lengths.tolist() == [16, 0, 9, 21]


def test_cache_accounting_reset_and_errors(tiny):
    cache = HybridCache.allocate(TINY, 3, 16, torch.float32, "cpu")
    n_attn, n_mamba = TINY.pattern.count("*"), TINY.pattern.count("M")
    kv = n_attn * 2 * 3 * TINY.num_key_value_heads * 16 * TINY.head_dim * 4
    conv = n_mamba * 3 * TINY.conv_dim * (TINY.conv_kernel - 1) * 4
    ssm = n_mamba * 3 * TINY.mamba_num_heads * TINY.mamba_head_dim * TINY.ssm_state_size * 4
    assert cache.nbytes == kv + conv + ssm + 3 * 8
    assert cache.memory_report()["kv"] == kv
    assert HybridCache.bytes_per_row(TINY, 16, torch.float32) * 3 == cache.nbytes
    half = HybridCache.allocate(TINY, 3, 16, torch.float32, "cpu", ssm_dtype=torch.float16)
    assert half.nbytes == kv + conv + ssm // 2 + 3 * 8
    with pytest.raises(RuntimeStateError, match="max_seq_len"):
        tiny(_ids(3, 17), cache)
    with torch.no_grad():
        tiny(_ids(3, 6), cache)
        assert any(t.abs().sum() > 0 for t in cache.ssm.values())
        cache.reset([1])
        assert cache.lengths.tolist() == [6, 0, 6]
        assert all(t[1].abs().sum() == 0 for t in list(cache.ssm.values()) + list(cache.conv.values()))
    with pytest.raises(RuntimeStateError, match="rows"):
        tiny(_ids(1, 1), cache, rows=torch.tensor([3]))
    mtp_cache = tiny.allocate_cache(2, 8, mtp=True)
    assert sorted(mtp_cache.kv) == [0] and not mtp_cache.ssm


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def test_mtp_block_by_hand():
    """§4.7 with explicit ops on a config small enough to read: 1 KV head, 4 experts, top-2, no groups."""
    cfg = TINY.replace(
        pattern="M*",
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        moe_latent_size=8,
        moe_intermediate_size=8,
        moe_shared_expert_intermediate_size=8,
        vocab_size=32,
        mamba_num_heads=2,
        mamba_head_dim=8,
        n_groups=1,
        routed_scaling_factor=2.0,
    )
    model = model_from_config(cfg, seed=1)
    with torch.no_grad():
        for p in model.mtp.parameters():  # O(1) weights so every term matters
            p.copy_(
                torch.randn(p.shape) / math.sqrt(p.shape[-1])
                if p.dim() > 1
                else 1 + 0.3 * torch.randn(p.shape)
            )
    ids = _ids(2, 6, seed=9, vocab=32)
    with torch.no_grad():
        got = model.mtp_logits(ids)
        h = model.hidden_states(ids)[:, :-1]  # final-normed backbone hidden at t
        e = model.backbone.embeddings.weight[ids[:, 1:]]  # embedding of x_{t+1}
        L0, L1 = model.mtp.layers
        eps = cfg.layer_norm_epsilon
        u = (
            torch.cat([_rms(e, L0.enorm.weight, eps), _rms(h, L0.hnorm.weight, eps)], -1)
            @ L0.eh_proj.weight.T
        )
        # sublayer 0: attention (causal, no RoPE, the single KV head shared by both query heads)
        x = _rms(u, L0.norm.weight, eps)
        a = L0.mixer
        T = x.shape[1]
        q = (x @ a.q_proj.weight.T).view(2, T, 2, 8)
        k = x @ a.k_proj.weight.T
        v = x @ a.v_proj.weight.T
        att = torch.einsum("bthd,bsd->bhts", q, k) / math.sqrt(8)
        att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        o = torch.einsum("bhts,bsd->bthd", att, v).reshape(2, T, 16)
        u = u + o @ a.o_proj.weight.T
        # sublayer 1: LatentMoE, every expert evaluated densely, top-2 of sigmoid + bias
        x = _rms(u, L1.norm.weight, eps)
        moe = L1.mixer
        scores = torch.sigmoid(x @ moe.gate.weight.T)
        top = (scores + moe.gate.e_score_correction_bias).topk(2, dim=-1).indices
        w = scores.gather(-1, top)
        w = w / w.sum(-1, keepdim=True) * 2.0
        r = x @ moe.fc1_latent_proj.weight.T
        routed = torch.zeros_like(r)
        for j in range(2):
            for ex in range(4):
                sel = (top[..., j] == ex)[..., None]
                y = F.relu(r @ moe.experts[ex].up_proj.weight.T).square() @ moe.experts[ex].down_proj.weight.T
                routed = routed + sel * w[..., j : j + 1] * y
        sh = moe.shared_experts
        u = (
            u
            + routed @ moe.fc2_latent_proj.weight.T
            + F.relu(x @ sh.up_proj.weight.T).square() @ sh.down_proj.weight.T
        )
        g = _rms(u, L1.final_layernorm.weight, eps)
        want = g @ model.lm_head.weight.T
    assert got.shape == (2, 5, 32)
    assert (got - want).abs().max().item() < 1e-5

    # mtp_step with a cache: all at once == token by token == mtp_logits; the output is the final-normed g
    with torch.no_grad():
        c1 = model.allocate_cache(2, 8, mtp=True)
        lg, g1 = model.mtp_step(h, ids[:, 1:], c1)
        assert torch.allclose(lg, got, atol=1e-5) and torch.allclose(g1, g, atol=1e-5)
        c2 = model.allocate_cache(2, 8, mtp=True)
        steps = [model.mtp_step(h[:, t : t + 1], ids[:, t + 1 : t + 2], c2)[0] for t in range(5)]
        assert torch.allclose(torch.cat(steps, 1), got, atol=1e-5)
        assert c2.lengths.tolist() == [5, 5]


def test_training_backward_and_bf16(tiny):
    model = model_from_config(TINY, seed=1).train()
    ids = _ids(2, 20)
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, TINY.vocab_size), ids[:, 1:].reshape(-1))
    loss = loss + F.cross_entropy(
        model.mtp_logits(ids[:, :-1]).reshape(-1, TINY.vocab_size), ids[:, 2:].reshape(-1)
    )
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.layers.0.mixer.A_log"].abs().sum() > 0
    assert grads["mtp.layers.0.eh_proj.weight"].abs().sum() > 0
    with torch.no_grad():
        bf = model_from_config(TINY, seed=1, dtype=torch.bfloat16)
        a, b = bf(ids), model.eval()(ids)
        assert a.dtype == torch.float32
        assert (a - b).abs().max().item() < 0.1 * b.abs().max().item() + 1e-2
        assert isinstance(bf, NemotronHForCausalLM)


@torch.no_grad()
def test_keep_steps_verify_and_commit(tiny):
    """Speculative verify through the multi-token recurrent step, keep a different prefix per row."""
    ids = _ids(2, 24, seed=11)
    cache = tiny.allocate_cache(2, 32)
    tiny(ids[:, :10], cache)
    cache.keep_steps = True
    verify = tiny(ids[:, 10:14], cache)  # 4 draft tokens per row
    cache.keep_steps = False
    full = tiny(ids[:, :14])
    assert (verify - full[:, 10:14]).abs().max().item() < 1e-4
    cache.commit([1, 3])  # row 0 keeps 1 token, row 1 keeps 3
    assert cache.lengths.tolist() == [11, 13]
    nxt = tiny(torch.stack([ids[0, 11:12], ids[1, 13:14]]), cache)
    assert (nxt[0, 0] - tiny(ids[:1, :12])[0, 11]).abs().max().item() < 1e-4
    assert (nxt[1, 0] - tiny(ids[1:, :14])[0, 13]).abs().max().item() < 1e-4
    with pytest.raises(RuntimeStateError, match="keep_steps"):
        cache.commit([1, 1])


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_matches_cpu_and_bf16_decode():
    cpu = model_from_config(TINY, seed=2)
    gpu = model_from_config(TINY, seed=2, device="cuda")
    ids = _ids(2, 40, seed=5)
    assert (gpu(ids.cuda()).cpu() - cpu(ids)).abs().max().item() < 1e-3
    bf = model_from_config(TINY, seed=2, dtype=torch.bfloat16, device="cuda")
    full = bf(ids.cuda())
    cache = bf.allocate_cache(2, 48)
    parts = [bf(ids[:, :30].cuda(), cache)] + [bf(ids[:, t : t + 1].cuda(), cache) for t in range(30, 40)]
    assert (torch.cat(parts, 1) - full).abs().max().item() < 5e-2 * full.abs().max().item() + 1e-2
