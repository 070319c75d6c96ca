"""The native CPU step (runtime/native) against the torch step (runtime/step.py), and its build and selection.

Configs cover what the C++ step branches on: LatentMoE with grouped routing and a shared expert (the tiny
preset), and a variant with a dense `-` MLP, attention / Mamba projection biases, no conv bias, tied
embeddings, no latent projection, no shared expert, one routing group and the dt clamp.
"""

from __future__ import annotations

import os

import pytest
import torch

from trtllm_nemotron.config import preset
from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.model import model_from_config
from trtllm_nemotron.runtime import Engine, native
from trtllm_nemotron.runtime import step as S

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


def _setup(name: str, rows: int = 3, cap: int = 48):
    over, clamp = VARIANTS[name]
    model = model_from_config(preset("tiny").replace(**over), seed=0, clamp_dt_min=clamp)
    fw, mw = S.FlatWeights(model), S.FlatWeights(model, mtp=True)
    caches = [(model.allocate_cache(rows, cap), model.allocate_cache(rows, cap, mtp=True)) for _ in range(2)]
    return model, fw, mw, caches


def _states(c) -> list[torch.Tensor]:
    return [t.clone() for t in c.tensors() if t.is_floating_point()]


def _close(a, b, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_native_step_matches_the_torch_step(name):
    torch.manual_seed(0)
    model, fw, mw, [(c_ref, m_ref), (c_nat, m_nat)] = _setup(name)
    nat = native.NativeStep(fw, mw, c_nat, m_nat)
    V = model.config.vocab_size
    rows = torch.tensor([2, 0])
    prompt = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        for c, m in ((c_ref, m_ref), (c_nat, m_nat)):  # same prefill through the reference network
            h = model.hidden_states(prompt, c, rows=rows)
            model.mtp_step(h[:, :-1], prompt[:, 1:], m, rows=rows)
        start = torch.tensor([9, 9])
        args = lambda c: (c.kv, c.conv, c.ssm, c.max_seq_len)  # noqa: E731

        # decode, state written in place
        ids = torch.randint(0, V, (2, 1))
        h_r, l_r, _ = S.forward_step(fw, ids, rows, start, *args(c_ref), False)
        h_n, l_n, _ = nat.forward_step(fw, ids, rows, start, *args(c_nat), False)
        _close(l_n, l_r, "decode logits")
        _close(h_n, h_r, "decode hidden")
        for a, b in zip(_states(c_nat), _states(c_ref), strict=True):
            _close(a, b, "cache after decode")

        # MTP block over two positions
        g_r, d_r = S.mtp_step(fw, mw, h_r, ids, rows, start, m_ref.kv, m_ref.max_seq_len)
        g_n, d_n = nat.mtp_step(fw, mw, h_n, ids, rows, start, m_nat.kv, m_nat.max_seq_len)
        _close(g_n, g_r, "mtp hidden")
        _close(d_n, d_r, "mtp logits")

        # 4-token verify with recorded states, then commit different accepted lengths per row
        start = start + 1
        ids = torch.randint(0, V, (2, 4))
        _, l_r, rec = S.forward_step(fw, ids, rows, start, *args(c_ref), True)
        _, l_n, rec_n = nat.forward_step(fw, ids, rows, start, *args(c_nat), True)
        _close(l_n, l_r, "verify logits")
        accept = torch.tensor([2, 0])
        S.commit_mamba(rec, c_ref.conv, c_ref.ssm, rows, accept)
        nat.commit_mamba(rec_n, c_nat.conv, c_nat.ssm, rows, accept)
        for a, b in zip(_states(c_nat), _states(c_ref), strict=True):
            _close(a, b, "cache after commit")

        # one whole greedy MTP iteration
        start = start + accept + 1
        ids = torch.randint(0, V, (2, 4))
        out_r = S.spec_step_greedy(fw, mw, ids, rows, start, *args(c_ref)[:3], m_ref.kv, c_ref.max_seq_len)
        out_n = nat.spec_step_greedy(fw, mw, ids, rows, start, *args(c_nat)[:3], m_nat.kv, c_nat.max_seq_len)
        for a, b, what in zip(out_n, out_r, ("targets", "accepted", "drafts"), strict=True):
            assert torch.equal(a, b), what
        for a, b in zip(_states(c_nat), _states(c_ref), strict=True):
            _close(a, b, "backbone cache after the MTP iteration")
        # MTP KV: equal through the last accepted position (the native step skips the MTP entries after it,
        # whose KV lies past the committed length and is overwritten before it is read)
        j = out_r[1]
        for a, b in zip(_states(m_nat), _states(m_ref), strict=True):
            for i, row in enumerate(rows.tolist()):
                n = int(start[i] + j[i] + 1)
                _close(a[row, :, :n], b[row, :, :n], "MTP KV after the MTP iteration")


def test_native_rows_are_bit_identical_alone_in_a_batch_and_across_tokens_per_step():
    """Every output element comes from the same C++ code whatever the batch or T: exact equality."""
    model, fw, mw, _ = _setup("tiny")
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (3, 4), generator=g)

    def run(rows_ids: torch.Tensor, rows: list[int], T: int) -> torch.Tensor:
        c, m = model.allocate_cache(3, 16), model.allocate_cache(3, 16, mtp=True)
        nat = native.NativeStep(fw, mw, c, m)
        r = torch.tensor(rows)
        outs = []
        for s in range(0, 4, T):
            st = torch.full((len(rows),), s)
            outs.append(
                nat.forward_step(fw, rows_ids[:, s : s + T], r, st, c.kv, c.conv, c.ssm, 16, False)[1]
            )
        return torch.cat(outs, dim=1)

    alone = run(ids[:1], [1], 4)
    batch = run(ids[[2, 0, 1]], [0, 1, 2], 4)
    one_by_one = run(ids[:1], [1], 1)
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(one_by_one, alone)


def test_build_is_cached_and_failures_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTLLM_NEMOTRON_CACHE_DIR", str(tmp_path / "cache"))
    so = native.build()
    assert so.is_file() and str(so).startswith(str(tmp_path / "cache"))
    mtime = so.stat().st_mtime_ns
    assert native.build() == so and so.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in so.parent.parent.iterdir()] == [so.parent.name]  # no temp dir left

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TRTLLM_NEMOTRON_CACHE_DIR", str(blocker))
    with pytest.raises(native.NativeUnavailable, match="TRTLLM_NEMOTRON_CACHE_DIR"):
        native.build()
    monkeypatch.setenv("TRTLLM_NEMOTRON_CACHE_DIR", str(tmp_path / "cache"))

    bad = tmp_path / "bad.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCE", bad)
    with pytest.raises(native.NativeUnavailable, match="compiling the native CPU step failed"):
        native.build()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(native.NativeUnavailable, match="does not run"):
        native.build()


def test_engine_backend_selection(tiny_dir):
    eng = Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64)
    assert eng.backend == "native" and eng._native is not None
    assert Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, dtype="bfloat16").backend == "eager"
    assert (
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, ssm_dtype="float16").backend == "eager"
    )
    with pytest.raises(RuntimeStateError, match="needs float32 weights"):
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, dtype="bfloat16", backend="native")
    with pytest.raises(RuntimeStateError, match="backend must be one of"):
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, backend="fast")
    eager = Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, backend="eager")
    assert eager.backend == "eager" and eager._native is None
    assert eng.generate("def f(x):").token_ids == eager.generate("def f(x):").token_ids


def test_forced_plugin_kernels_keep_the_torch_step(tiny_dir, monkeypatch):
    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "interpret")
    assert os.environ["TRTLLM_NEMOTRON_KERNELS"] == "interpret"
    eng = Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64)
    assert eng.backend == "eager"


def test_bf16_weight_streaming_is_exact():
    """Weights that are exactly bfloat16 (a bf16 checkpoint upcast at load) may be streamed as bfloat16: the
    widened values are the same floats, so every result is bit-identical to the float32 path."""
    model, fw, mw, _ = _setup("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    fw, mw = S.FlatWeights(model), S.FlatWeights(model, mtp=True)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(5))
    rows, start = torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long)
    outs = []
    for bf16 in (True, False):
        c, m = model.allocate_cache(2, 16), model.allocate_cache(2, 16, mtp=True)
        nat = native.NativeStep(fw, mw, c, m, bf16=bf16)
        h, logits, _ = nat.forward_step(fw, ids, rows, start, c.kv, c.conv, c.ssm, 16, False)  # T = 5
        _, step, _ = nat.forward_step(
            fw, ids[:, :1], rows, start + 5, c.kv, c.conv, c.ssm, 16, False
        )  # T = 1
        outs.append((logits, step, nat.weight_bytes))
    (a, a1, bytes_bf16), (b, b1, bytes_fp32) = outs
    assert torch.equal(a, b) and torch.equal(a1, b1)
    assert bytes_bf16 * 2 == bytes_fp32


def test_out_of_range_calls_are_refused_before_touching_the_caches():
    model, fw, mw, [(c, m), _] = _setup("tiny", rows=2, cap=8)
    nat = native.NativeStep(fw, mw, c, m)
    V = model.config.vocab_size
    before = _states(c) + _states(m)
    ok = torch.zeros(1, 1, dtype=torch.long)
    cases = [
        ("cache row outside the slot pool", ok, torch.tensor([2]), torch.tensor([0])),
        ("position past the cache", ok, torch.tensor([0]), torch.tensor([8])),
        ("position past the cache", ok, torch.tensor([0]), torch.tensor([-1])),
        ("token id outside the vocabulary", torch.full((1, 1), V), torch.tensor([0]), torch.tensor([0])),
    ]
    for what, ids, rows, start in cases:
        with pytest.raises(RuntimeStateError, match=f"native forward step refused: a {what}"):
            nat.forward_step(fw, ids, rows, start, c.kv, c.conv, c.ssm, 8, False)
    with pytest.raises(RuntimeStateError, match="position past"):
        nat.spec_step_greedy(
            fw,
            mw,
            torch.zeros(1, 4, dtype=torch.long),
            torch.tensor([0]),
            torch.tensor([3]),
            c.kv,
            c.conv,
            c.ssm,
            m.kv,
            8,
        )  # fmt: skip  (3 + 4 tokens fit, the drafts do not)
    c.lengths[1] = 8
    with pytest.raises(RuntimeStateError, match="position past"):
        nat.decode_greedy([1], [1])
    with pytest.raises(RuntimeStateError, match="commit"):
        nat.commit_mamba({}, c.conv, c.ssm, torch.tensor([0]), torch.tensor([0]))  # nothing recorded
    for a, b in zip(_states(c) + _states(m), before, strict=True):
        assert torch.equal(a, b)
    assert int(c.lengths[1]) == 8


def test_prefill_past_the_cache_is_refused():
    model, fw, mw, [(c, m), _] = _setup("tiny", rows=1, cap=8)
    nat = native.NativeStep(fw, mw, c, m)
    h = nat.prefill([1, 2, 3, 4, 5], 0)
    assert h.shape == (1, 5, model.config.hidden_size) and int(c.lengths[0]) == 5
    nat.mtp_prefill(h, [2, 3, 4, 5, 6], 0)
    assert int(m.lengths[0]) == 5
    with pytest.raises(RuntimeStateError, match="native prefill refused: a position past"):
        nat.prefill([1, 2, 3, 4], 0)
    with pytest.raises(RuntimeStateError, match="native MTP prefill refused: a position past"):
        nat.mtp_prefill(h[:, :4], [1, 2, 3, 4], 0)
    assert int(c.lengths[0]) == 5 and int(m.lengths[0]) == 5
