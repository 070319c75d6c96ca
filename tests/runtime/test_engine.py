"""Generation correctness on a random tiny checkpoint (make_tiny: M, E with LatentMoE, *, one MTP block).

Random weights give meaningless text, but exact token equality is a sharp test: any state that is wrong
by more than rounding flips greedy tokens within a few steps.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime import Engine, SamplingParams

PROMPTS = [
    "def fibonacci(n):",
    "import os\n",
    "class Foo:",
    "x = [",
    "for i in range(10):",
    "print('hi')",
    "a",
    "return None",
    "while True:",
    "# comment",
]


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


def _recompute(model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy generation by running the whole sequence through the uncached network every step."""
    seq = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt_ids) :]


def test_cached_generation_equals_recomputing_the_whole_sequence(engine0):
    prompt = "def fibonacci(n):\n    "
    c = engine0.generate(prompt, _greedy(24))
    assert c.finish_reason == "length" and c.stats["num_tokens"] == 24
    assert c.token_ids == _recompute(engine0.model, engine0.tokenizer.encode(prompt), 24)
    assert c.text == engine0.tokenizer.decode(c.token_ids)


def test_chunked_prefill_equals_one_shot_prefill(tiny_dir, engine0):
    small = Engine.load(
        tiny_dir, mtp=0, max_batch_size=1, max_seq_len=256, prefill_chunk=5, backend=engine0.backend
    )
    prompt = "def fibonacci(n):\n    if n < 2:\n        return n\n"
    assert len(small.tokenizer.encode(prompt)) > 10
    assert small.generate(prompt, _greedy(16)).token_ids == engine0.generate(prompt, _greedy(16)).token_ids


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_greedy_output_identical_with_and_without_mtp(engine0, engine3, prompt):
    a = engine0.generate(prompt, _greedy(30))
    b = engine3.generate(prompt, _greedy(30))
    assert a.token_ids == b.token_ids and a.text == b.text
    st = b.stats
    assert st["draft_tokens"] == 3 * (st["decode_iterations"] + 1)
    assert st["accepted_draft_tokens"] == 30 - st["decode_iterations"] - 1
    assert st["acceptance_length"] == pytest.approx(30 / (st["decode_iterations"] + 1))
    assert a.stats["acceptance_rate"] is None and a.stats["acceptance_length"] is None


def test_mtp_chunked_prefill_drafts_like_one_shot(tiny_dir, engine3):
    small = Engine.load(
        tiny_dir, mtp=3, max_batch_size=1, max_seq_len=256, prefill_chunk=4, backend=engine3.backend
    )
    prompt = "class Foo:\n    def bar(self):\n        pass\n"
    a, b = small.generate(prompt, _greedy(12)), engine3.generate(prompt, _greedy(12))
    assert a.token_ids == b.token_ids and a.stats["accepted_draft_tokens"] == b.stats["accepted_draft_tokens"]


def _slot_state(eng, slot):
    c = eng.pool.cache
    n = int(c.lengths[slot])
    kv = {i: (k[slot, :, :n].clone(), v[slot, :, :n].clone()) for i, (k, v) in c.kv.items()}
    return (
        n,
        kv,
        {i: t[slot].clone() for i, t in c.conv.items()},
        {i: t[slot].clone() for i, t in c.ssm.items()},
    )


@pytest.mark.parametrize("n_correct", [0, 1, 2])
def test_state_after_a_rejected_draft_equals_a_run_that_never_drafted(engine0, engine3, n_correct):
    prompt = "def fibonacci(n):"
    ref_tokens = engine0.generate(prompt, _greedy(8)).token_ids
    # speculative run: prefill, then one verification whose drafts are right for n_correct tokens only
    s3 = engine3.new_request(prompt, _greedy(8))
    engine3.admit(s3)
    try:
        engine3.iterate([s3])  # prefill -> first token
        assert s3.out_ids == ref_tokens[:1]
        wrong = [(t + 1) % engine3.config.vocab_size for t in ref_tokens[1:4]]
        s3.drafts = ref_tokens[1 : 1 + n_correct] + wrong[n_correct:]
        engine3.iterate([s3])
        assert s3.out_ids == ref_tokens[: n_correct + 2]  # accepted drafts + the target's own token
        spec = _slot_state(engine3, s3.slot)
    finally:
        engine3.release(s3)
    # plain run over the same tokens
    s0 = engine0.new_request(prompt, _greedy(8))
    engine0.admit(s0)
    try:
        while len(s0.out_ids) < n_correct + 2:
            engine0.iterate([s0])
        plain = _slot_state(engine0, s0.slot)
    finally:
        engine0.release(s0)
    assert spec[0] == plain[0]
    for i in plain[1]:
        torch.testing.assert_close(spec[1][i], plain[1][i], rtol=1e-5, atol=1e-6)
    for i in plain[2]:
        torch.testing.assert_close(spec[2][i], plain[2][i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(spec[3][i], plain[3][i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mtp", [0, 3])
def test_request_alone_equals_request_in_a_batch_of_8_with_joins_and_leaves(engine0, engine3, mtp):
    eng = engine3 if mtp else engine0
    lengths = [6 + 3 * i for i in range(len(PROMPTS))]  # different lengths: requests leave at different steps
    alone = [eng.generate(p, _greedy(n)).token_ids for p, n in zip(PROMPTS, lengths, strict=True)]
    with eng.scheduler() as sched:
        handles = []
        # 10 requests into 8 slots: one prefill chunk per iteration, so each request joins while the earlier
        # ones decode, and the last two wait for slots that requests leaving at different steps free
        for p, n in zip(PROMPTS, lengths, strict=True):
            handles.append(sched.submit(p, _greedy(n)))
        results = [h.result() for h in handles]
        assert sched.iterations < sum(lengths)  # requests really shared decode steps
    assert [r.token_ids for r in results] == alone
    assert eng.pool.num_free == eng.max_batch_size


def test_seeded_sampling_reproducible_alone_and_batched(engine0, engine3):
    p = SamplingParams(max_tokens=16, temperature=0.9, top_k=50, top_p=0.95, seed=1234, ignore_eos=True)
    a = engine0.generate("def f(x):", p).token_ids
    assert engine0.generate("def f(x):", p).token_ids == a
    other = SamplingParams(max_tokens=16, temperature=0.9, top_k=50, top_p=0.95, seed=99, ignore_eos=True)
    assert engine0.generate("def f(x):", other).token_ids != a
    with engine0.scheduler() as sched:
        hs = [
            sched.submit("x = [", SamplingParams(max_tokens=10, temperature=1.0, seed=5)),
            sched.submit("def f(x):", p),
        ]
        assert hs[1].result().token_ids == a
        hs[0].result()
    b = engine3.generate(
        "def f(x):", p
    ).token_ids  # MTP consumes random numbers differently, but reproducibly
    assert engine3.generate("def f(x):", p).token_ids == b


def test_cancellation_frees_the_slot(engine0):
    with engine0.scheduler() as sched:
        h = sched.submit("def f(x):", _greedy(200))
        first = next(h)
        assert first.finish_reason is None
        h.cancel()
        events = list(h)
        assert events[-1].finish_reason == "cancelled" and events[-1].stats is not None
        deadline = time.time() + 5
        while engine0.pool.num_free != engine0.max_batch_size and time.time() < deadline:
            time.sleep(0.01)
        assert engine0.pool.num_free == engine0.max_batch_size
        # the freed slot serves the next request from a clean state
        assert sched.submit("a", _greedy(5)).result().token_ids == engine0.generate("a", _greedy(5)).token_ids


def test_over_long_prompt_and_impossible_options_are_refused(engine0):
    long_prompt = list(range(3, 3 + 256))
    with pytest.raises(RuntimeStateError, match="max_seq_len is 256"):
        engine0.generate(long_prompt, _greedy(4))
    with engine0.scheduler() as sched:
        with pytest.raises(RuntimeStateError, match="max_seq_len"):
            sched.submit(long_prompt, _greedy(4))
        with pytest.raises(RuntimeStateError, match="top_p"):
            sched.submit("x", SamplingParams(top_p=2.0))
        with pytest.raises(RuntimeStateError, match="empty"):
            sched.submit("", _greedy(4))
    with pytest.raises(RuntimeStateError, match="vocabulary"):
        engine0.generate([10**6], _greedy(4))


def test_generation_stops_at_max_seq_len_eos_and_stop_strings(engine0):
    c = engine0.generate(list(range(3, 3 + 250)), _greedy(100))
    assert c.finish_reason == "length" and len(c.token_ids) == 6  # 250 + 6 = max_seq_len
    ref = engine0.generate("def f(x):", _greedy(20))
    eos = ref.token_ids[5]
    eng = Engine(
        engine0.model,
        engine0.tokenizer,
        max_batch_size=1,
        max_seq_len=256,
        eos_token_ids=[eos],
        backend=engine0.backend,
    )
    c = eng.generate("def f(x):", SamplingParams(max_tokens=20))
    assert c.finish_reason == "stop" and c.token_ids == ref.token_ids[: ref.token_ids.index(eos)]
    stop = ref.text[4:6]
    c = engine0.generate("def f(x):", SamplingParams(max_tokens=20, stop=(stop,), ignore_eos=True))
    assert c.finish_reason == "stop" and c.text == ref.text[: ref.text.index(stop)]


def test_memory_is_accounted(engine3):
    cfg = engine3.config
    rep = engine3.memory_report()
    cap = engine3.pool.capacity
    rows = engine3.pool.cache.batch_size  # 8 slots + the scratch row
    kv = cfg.pattern.count("*") * 2 * rows * cfg.num_key_value_heads * cap * cfg.head_dim * 4
    ssm = cfg.pattern.count("M") * rows * cfg.mamba_num_heads * cfg.mamba_head_dim * cfg.ssm_state_size * 4
    assert rep["kv"] == kv and rep["ssm"] == ssm and rep["mtp_kv"] > 0
    assert rep["total"] >= rep["kv"] + rep["conv"] + rep["ssm"] + rep["mtp_kv"] and rep["slots"] == 8


def test_fp16_ssm_state_option(tiny_dir):
    eng = Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, ssm_dtype="float16")
    assert all(t.dtype == torch.float16 for t in eng.pool.cache.ssm.values())
    assert eng.generate("def f(x):", _greedy(4)).stats["num_tokens"] == 4


def test_engine_dir_mtp_setting_is_the_default(tiny_dir, tmp_path):
    eng_dir = tmp_path / "engine"
    shutil.copytree(tiny_dir, eng_dir / "checkpoint")
    (eng_dir / "build.json").write_text(json.dumps({"format_version": 1, "mtp": {"max_draft_len": 2}}))
    eng = Engine.load(eng_dir, max_batch_size=1, max_seq_len=64)
    assert eng.mtp == 2
    assert Engine.load(eng_dir, max_batch_size=1, max_seq_len=64, mtp=0).mtp == 0
    with pytest.raises(RuntimeStateError, match="unknown dtype 'float8'"):
        Engine.load(eng_dir, dtype="float8")


def test_sampled_mtp_path_with_top_k_1_equals_greedy(engine0, engine3):
    """top_k=1 sampling is deterministic but runs the general (sampled) verification path of MTP."""
    greedy = engine0.generate("import os\n", _greedy(20)).token_ids
    p = SamplingParams(max_tokens=20, temperature=1.0, top_k=1, seed=0, ignore_eos=True)
    assert engine3.generate("import os\n", p).token_ids == greedy
    with engine3.scheduler() as sched:  # greedy and sampled rows in one batch: the general path for both
        hs = [sched.submit("import os\n", p), sched.submit("import os\n", _greedy(20))]
        assert [h.result().token_ids for h in hs] == [greedy, greedy]


def test_streamed_deltas_concatenate_to_the_completion(engine3):
    with engine3.scheduler() as sched:
        h = sched.submit("def f(x):", _greedy(24), request_id="stream-1")
        events = list(h)
    assert h.request_id == "stream-1"
    assert all(e.finish_reason is None and e.stats is None for e in events[:-1])
    last = events[-1]
    assert last.finish_reason == "length" and last.stats["num_tokens"] == 24 and last.error is None
    ids = [t for e in events for t in e.token_ids]
    assert "".join(e.text for e in events) == engine3.tokenizer.decode(ids)
    assert ids == engine3.generate("def f(x):", _greedy(24)).token_ids


def test_next_events_takes_everything_already_queued(engine0):
    with engine0.scheduler() as sched:
        h = sched.submit("def f(x):", _greedy(6))
        while h._events.qsize() < 2 or not any(e.finish_reason for e in list(h._events.queue)):
            time.sleep(0.005)  # let the request finish: every event is queued
        evs = h.next_events()
        assert evs[-1].finish_reason == "length" and all(e.finish_reason is None for e in evs[:-1])
        assert [t for e in evs for t in e.token_ids] == engine0.generate("def f(x):", _greedy(6)).token_ids
        with pytest.raises(StopIteration):
            h.next_events()


def test_stream_interval_delivers_first_every_nth_and_last(engine0):
    """TensorRT-LLM's stream_interval: a delivery at the first iteration, every n-th, and the last; merged
    events carry every token and the same text."""
    ref = engine0.generate("def f(x):", _greedy(10)).token_ids
    with engine0.scheduler(stream_interval=4) as sched:
        events = list(sched.submit("def f(x):", _greedy(10)))
        per_request = list(sched.submit("def f(x):", _greedy(10), stream_interval=1))
    assert [len(e.token_ids) for e in events] == [1, 3, 4, 2]  # iterations 1, 4, 8, 10 (final)
    assert [t for e in events for t in e.token_ids] == ref
    assert "".join(e.text for e in events) == engine0.tokenizer.decode(ref)
    assert len(per_request) == 10
    with pytest.raises(RuntimeStateError, match="stream_interval"):
        engine0.scheduler(stream_interval=0)


def test_deliver_callback_gets_each_iteration_as_one_batch(engine0):
    batches = []
    prompts = ["def f(x):", "import os\n", "x = ["]
    with engine0.scheduler(deliver=batches.append) as sched:
        handles = [sched.submit(p, _greedy(8)) for p in prompts]
        while sum(1 for b in batches for _, e in b if e.finish_reason) < len(prompts):
            time.sleep(0.01)
    for h, p in zip(handles, prompts, strict=True):
        evs = [e for b in batches for hh, e in b if hh is h]
        assert [t for e in evs for t in e.token_ids] == engine0.generate(p, _greedy(8)).token_ids
        assert evs[-1].finish_reason == "length" and h._events.empty()  # handles' queues are not fed
    assert any(len(b) > 1 for b in batches)  # requests decoding together arrive together


def test_engine_stream_yields_the_completion_and_frees_the_slot_when_closed(engine3):
    ref = engine3.generate("def f(x):", _greedy(12))
    events = list(engine3.stream("def f(x):", _greedy(12)))
    assert [t for e in events for t in e.token_ids] == ref.token_ids
    assert "".join(e.text for e in events) == ref.text and events[-1].finish_reason == "length"
    free = engine3.num_free_slots
    it = engine3.stream("def f(x):", _greedy(50))
    next(it)
    assert engine3.num_free_slots == free - 1
    it.close()  # the consumer stops early: cancelled, slot back
    assert engine3.num_free_slots == free
    with pytest.raises(RuntimeStateError):
        engine3.stream("", _greedy(4))  # checked at the call, before any event
