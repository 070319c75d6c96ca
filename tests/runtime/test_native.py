"""The native CPU step (runtime/native): bit-identical rows, weight streaming, argument checks, build and
selection. Its agreement with the eager backend and the reference network is tests/runtime/test_backends.py.
"""

from __future__ import annotations

import pytest
import torch

from tests.runtime.test_backends import make_model, make_pool, states
from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime import Engine, native
from trtllm_nemotron.runtime.native import NativeBackend


def test_native_rows_are_bit_identical_alone_in_a_batch_and_across_tokens_per_step():
    """Every output element comes from the same C++ code whatever the batch or T: exact equality."""
    model = make_model("tiny")
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (3, 4), generator=g)

    def run(rows_ids: torch.Tensor, rows: list[int], T: int) -> torch.Tensor:
        nat = NativeBackend(model, make_pool(model, rows=3, cap=16))
        r = torch.tensor(rows)
        outs = []
        for s in range(0, 4, T):
            st = torch.full((len(rows),), s)
            outs.append(nat.forward(rows_ids[:, s : s + T], r, st, record=False, logits=True)[1])
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
    assert eng.backend == "native" and isinstance(eng.step, NativeBackend)
    assert Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, dtype="bfloat16").backend == "eager"
    assert (
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, ssm_dtype="float16").backend == "eager"
    )
    with pytest.raises(RuntimeStateError, match="needs float32 weights"):
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, dtype="bfloat16", backend="native")
    with pytest.raises(RuntimeStateError, match="backend must be one of"):
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, backend="fast")
    eager = Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, backend="eager")
    assert eager.backend == "eager" and not isinstance(eager.step, NativeBackend)
    assert eng.generate("def f(x):").token_ids == eager.generate("def f(x):").token_ids


def test_forced_plugin_kernels_keep_the_torch_step(tiny_dir, monkeypatch):
    """The native step does not call the plugin ops, so forcing the kernels must select the eager backend
    (which does) under auto, and refuse backend="native" saying why; unforced, auto takes native."""
    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "interpret")
    assert Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64).backend == "eager"
    with pytest.raises(RuntimeStateError, match="TRTLLM_NEMOTRON_KERNELS forces the plugin kernels"):
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, backend="native")
    monkeypatch.setenv("TRTLLM_NEMOTRON_KERNELS", "reference")
    assert Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64).backend == "native"


def test_bf16_weight_streaming_is_exact():
    """Weights that are exactly bfloat16 (a bf16 checkpoint upcast at load) may be streamed as bfloat16: the
    widened values are the same floats, so every result is bit-identical to the float32 path."""
    model = make_model("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    V = model.config.vocab_size
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(5))
    rows, start = torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long)
    outs = []
    for bf16 in (True, False):
        nat = NativeBackend(model, make_pool(model, rows=2, cap=16), bf16=bf16)
        _, logits = nat.forward(ids, rows, start, record=False, logits=True)  # T = 5
        _, step = nat.forward(ids[:, :1], rows, start + 5, record=False, logits=True)  # T = 1
        outs.append((logits, step, nat.weight_bytes))
    (a, a1, bytes_bf16), (b, b1, bytes_fp32) = outs
    assert torch.equal(a, b) and torch.equal(a1, b1)
    assert bytes_bf16 * 2 == bytes_fp32


def test_out_of_range_calls_are_refused_before_touching_the_caches():
    model = make_model("tiny")
    nat = NativeBackend(model, make_pool(model, rows=2, cap=8))
    c, m = nat.cache, nat.mtp_cache
    V = model.config.vocab_size
    before = states(c) + states(m)
    ok = torch.zeros(1, 1, dtype=torch.long)
    cases = [
        ("cache row outside the slot pool", ok, torch.tensor([2]), torch.tensor([0])),
        ("position past the cache", ok, torch.tensor([0]), torch.tensor([8])),
        ("position past the cache", ok, torch.tensor([0]), torch.tensor([-1])),
        ("token id outside the vocabulary", torch.full((1, 1), V), torch.tensor([0]), torch.tensor([0])),
    ]
    for what, ids, rows, start in cases:
        with pytest.raises(RuntimeStateError, match=f"native forward step refused: a {what}"):
            nat.forward(ids, rows, start, record=False, logits=True)
    with pytest.raises(RuntimeStateError, match="position past"):  # 3 + 4 tokens fit, the drafts do not
        nat.spec_at(torch.zeros(1, 4, dtype=torch.long), torch.tensor([0]), torch.tensor([3]))
    c.lengths[1] = 8
    with pytest.raises(RuntimeStateError, match="position past"):
        nat.decode_greedy([1], [1])
    with pytest.raises(RuntimeStateError, match="commit"):
        nat.commit_at(torch.tensor([0]), torch.tensor([0]))  # nothing recorded
    for a, b in zip(states(c) + states(m), before, strict=True):
        assert torch.equal(a, b)
    assert int(c.lengths[1]) == 8


def test_prefill_past_the_cache_is_refused():
    model = make_model("tiny")
    nat = NativeBackend(model, make_pool(model, rows=1, cap=8))
    c, m = nat.cache, nat.mtp_cache
    h = nat.prefill([1, 2, 3, 4, 5], 0)
    assert h.shape == (1, 5, model.config.hidden_size) and int(c.lengths[0]) == 5
    nat.mtp(h, torch.tensor([[2, 3, 4, 5, 6]]), [0], logits=False)
    assert int(m.lengths[0]) == 5
    with pytest.raises(RuntimeStateError, match="native prefill refused: a position past"):
        nat.prefill([1, 2, 3, 4], 0)
    with pytest.raises(RuntimeStateError, match="native MTP step refused: a position past"):
        nat.mtp(h[:, :4], torch.tensor([[1, 2, 3, 4]]), [0], logits=False)
    assert int(c.lengths[0]) == 5 and int(m.lengths[0]) == 5
