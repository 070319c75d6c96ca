"""Prefix cache (runtime/prefix_cache.py): exact reuse of KV blocks + Mamba state snapshots.

Every generation here is compared token for token with the same request on an engine without the prefix cache
(the session engines of conftest.py), on both CPU backends, with and without MTP. Random weights make greedy
tokens a sharp check: a restored state that is off by more than rounding changes them within a few steps.
"""

from __future__ import annotations

import random

import pytest
import torch

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime import Engine, SamplingParams
from trtllm_nemotron.runtime.prefix_cache import PrefixCache, block_keys, default_budget_bytes

BLOCK = 8


def _greedy(n: int = 12) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


def _ids(n: int, seed: int, vocab: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(3, vocab) for _ in range(n)]


@pytest.fixture(scope="module")
def cached(tiny_dir, backend):
    """mtp -> engine with a prefix cache (block 8, room for plenty of blocks), prefill chunks of 20 tokens so
    block boundaries fall inside chunks."""
    return {
        mtp: Engine.load(
            tiny_dir,
            mtp=mtp,
            max_batch_size=8,
            max_seq_len=256,
            backend=backend,
            prefill_chunk=20,
            prefix_cache_mb=16,
            prefix_block=BLOCK,
        )
        for mtp in (0, 3)
    }


@pytest.fixture
def plain(engine0, engine3):
    return {0: engine0, 3: engine3}


@pytest.mark.parametrize("mtp", [0, 3])
def test_reuse_is_exact_for_none_part_and_all_of_a_cached_prefix(cached, plain, mtp):
    eng, ref = cached[mtp], plain[mtp]
    eng.prefix.clear()
    V = eng.config.vocab_size
    base = _ids(61, 1, V)
    cases = [
        ("first", base, 0),
        ("same again", base, (60 // BLOCK) * BLOCK),  # all of it (the last token always runs)
        ("longer", base + _ids(23, 2, V), (61 // BLOCK) * BLOCK),  # the cached prompt is a prefix
        ("part", base[:29] + _ids(30, 3, V), (29 // BLOCK) * BLOCK),  # diverges inside block 3
        ("none", _ids(40, 4, V), 0),
        ("exactly one block", base[: BLOCK + 1], BLOCK),
    ]
    for name, prompt, reused in cases:
        got = eng.generate(prompt, _greedy())
        assert got.token_ids == ref.generate(prompt, _greedy()).token_ids, name
        assert got.stats["prefix_reused_tokens"] == reused, name
        assert got.stats["kv_cache_reused_block"] == reused // BLOCK, name


@pytest.mark.parametrize("mtp", [0, 3])
def test_batched_and_concurrent_requests_sharing_a_prefix(cached, plain, mtp):
    eng, ref = cached[mtp], plain[mtp]
    eng.prefix.clear()
    V = eng.config.vocab_size
    system = _ids(45, 10, V)
    prompts = [system + _ids(5 + i, 20 + i, V) for i in range(5)]
    want = [c.token_ids for c in ref.generate_batch(prompts, _greedy())]
    # cold: every request prefills (they share the cache as they go), then warm in a batch
    assert [c.token_ids for c in eng.generate_batch(prompts, _greedy())] == want
    warm = eng.generate_batch(prompts, _greedy())
    assert [c.token_ids for c in warm] == want
    assert all(c.stats["prefix_reused_tokens"] >= 40 for c in warm)
    # through the continuous-batching scheduler, submitted together
    with eng.scheduler() as sched:
        handles = [sched.submit(p, _greedy()) for p in prompts]
        assert [h.result().token_ids for h in handles] == want


@pytest.mark.parametrize("mtp", [0, 3])
def test_a_finished_request_lets_the_next_turn_reuse_its_whole_conversation(cached, plain, mtp):
    """Snapshots on finished requests: turn 2 = turn 1's prompt + its answer + a new message restores every
    position turn 1 wrote (the tail), not only the prompt's whole blocks; a different continuation falls back."""
    eng, ref = cached[mtp], plain[mtp]
    eng.prefix.clear()
    V = eng.config.vocab_size
    turn1 = _ids(37, 90, V)
    first = eng.generate(turn1, _greedy(13))
    assert first.token_ids == ref.generate(turn1, _greedy(13)).token_ids
    turn2 = turn1 + first.token_ids + _ids(6, 91, V)
    got = eng.generate(turn2, _greedy())
    assert got.token_ids == ref.generate(turn2, _greedy()).token_ids
    assert (
        got.stats["prefix_reused_tokens"] == len(turn1) + len(first.token_ids) - 1
    )  # all but the last answer
    # the answer's last token replaced: the tail does not match, the longest snapshotted block does
    other = turn1 + first.token_ids[:-1] + [(first.token_ids[-1] + 1) % V or 3] + _ids(6, 92, V)
    got = eng.generate(other, _greedy())
    assert got.token_ids == ref.generate(other, _greedy()).token_ids
    assert got.stats["prefix_reused_tokens"] < len(turn1) + len(first.token_ids) - 1


def test_eviction_under_a_tiny_budget_stays_exact(tiny_dir, plain, backend):
    ref = plain[3]
    per_block = PrefixCache.bytes_per_block(ref.config, BLOCK, mtp=True)
    eng = Engine.load(
        tiny_dir,
        mtp=3,
        max_batch_size=2,
        max_seq_len=256,
        backend=backend,
        prefix_block=BLOCK,
        prefix_cache_mb=3.5 * per_block / 2**20,  # room for 3 blocks
    )
    V = eng.config.vocab_size
    a, b = _ids(50, 30, V), _ids(50, 31, V)
    for prompt in (a, b, a, a, b[:20] + _ids(9, 32, V), b):
        assert eng.generate(prompt, _greedy(8)).token_ids == ref.generate(prompt, _greedy(8)).token_ids
        assert eng.prefix.used_bytes <= eng.prefix.budget_bytes
    rep = eng.prefix.report()
    assert rep["evicted_blocks"] > 0 and rep["reused_blocks"] > 0
    # a chain is trimmed from its end: every cached block's parent is cached too
    blocks = eng.prefix._blocks
    assert all(blk.parent is None or blk.parent in blocks for blk in blocks.values())


def test_memory_accounting_matches_the_per_block_formula(cached):
    for mtp, eng in cached.items():
        eng.prefix.clear()
        prompt = _ids(3 * BLOCK + 1, 40, eng.config.vocab_size)
        eng.generate(prompt, _greedy(2))
        per_block = PrefixCache.bytes_per_block(eng.config, BLOCK, mtp=bool(mtp))
        entries = list(eng.prefix._blocks.values())
        blocks = [b for b in entries if not b.tail]
        assert (
            len(blocks) == 3 and len(entries) == 4
        )  # 3 snapshotted prompt blocks + the finished request's tail
        # block 0 holds one MTP entry less (the entry at position -1 does not exist); the others are exact
        assert [b.nbytes for b in blocks[1:]] == [per_block, per_block] and blocks[0].nbytes <= per_block
        assert eng.prefix.used_bytes == sum(b.nbytes for b in entries)
        assert eng.memory_report()["prefix_cache"] == eng.prefix.budget_bytes
    # the default budget: as many prefix tokens as the slots hold, capped at a quarter of host memory
    cfg = eng.config
    per = PrefixCache.bytes_per_block(cfg, 64, mtp=True)
    assert (
        default_budget_bytes(cfg, 64, mtp=True, max_batch_size=8, max_seq_len=4096, host_bytes=2**40)
        == per * 512
    )
    assert (
        default_budget_bytes(cfg, 64, mtp=True, max_batch_size=8, max_seq_len=4096, host_bytes=4 * per) == per
    )


def test_a_request_cancelled_mid_prefill_leaves_only_whole_blocks(cached, plain):
    eng, ref = cached[3], plain[3]
    eng.prefix.clear()
    prompt = _ids(70, 50, eng.config.vocab_size)
    req = eng.new_request(prompt, _greedy())
    assert eng.try_admit(req)
    eng.iterate([req])  # one prefill chunk of 20 tokens: blocks 0 and 1 complete, block 2 half-run
    assert req.prefilled == 20
    eng.finish(req, "cancelled")  # what the scheduler does on cancel: the slot is freed
    assert len(eng.prefix) == 2
    got = eng.generate(prompt, _greedy())
    assert got.stats["prefix_reused_tokens"] == 2 * BLOCK
    assert got.token_ids == ref.generate(prompt, _greedy()).token_ids


def test_a_failing_prefill_piece_never_publishes_its_block(cached, plain, monkeypatch):
    eng, ref = cached[0], plain[0]
    eng.prefix.clear()
    prompt = _ids(30, 60, eng.config.vocab_size)
    real = eng._prefill_piece
    calls = []

    def flaky(seq, s, e, events):
        calls.append((s, e))
        if len(calls) == 2:  # the second block fails part-way through
            raise RuntimeError("injected failure")
        return real(seq, s, e, events)

    monkeypatch.setattr(eng, "_prefill_piece", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        eng.generate(prompt, _greedy())
    monkeypatch.undo()
    assert len(eng.prefix) == 1  # block 0 only
    got = eng.generate(prompt, _greedy())
    assert got.stats["prefix_reused_tokens"] == BLOCK
    assert got.token_ids == ref.generate(prompt, _greedy()).token_ids


def test_hash_chain_and_token_check():
    a = list(range(3, 3 + 4 * BLOCK))
    b = a[: 2 * BLOCK] + [7] * (2 * BLOCK)
    ka, kb = block_keys(a, BLOCK), block_keys(b, BLOCK)
    assert len(ka) == 4 and ka[:2] == kb[:2] and ka[2] != kb[2] and ka[3] != kb[3]
    # the same block after a different prefix gets a different key (the chain, not the block alone)
    assert block_keys(a[BLOCK : 2 * BLOCK], BLOCK)[0] != ka[1]


def test_a_stored_block_whose_tokens_differ_is_not_served(cached):
    eng = cached[0]
    eng.prefix.clear()
    prompt = _ids(2 * BLOCK + 3, 70, eng.config.vocab_size)
    eng.generate(prompt, _greedy(2))
    first = next(iter(eng.prefix._blocks.values()))
    first.tokens = (first.tokens[0] + 1,) + first.tokens[1:]  # what a hash collision would look like
    assert eng.prefix.lookup(prompt).blocks == []


def test_bad_options_are_refused(tiny_dir):
    with pytest.raises(RuntimeStateError, match="prefix_cache_mb must be >= 0"):
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, prefix_cache_mb=-1)
    with pytest.raises(RuntimeStateError, match="prefix_block must be >= 1"):
        Engine.load(tiny_dir, mtp=0, max_batch_size=1, max_seq_len=64, prefix_cache_mb=1, prefix_block=0)


def test_snapshots_are_copies(cached):
    """Decoding (incl. MTP verification, which rewrites the Mamba state) never changes a stored snapshot."""
    eng = cached[3]
    eng.prefix.clear()
    prompt = _ids(3 * BLOCK + 2, 80, eng.config.vocab_size)
    eng.generate(prompt, _greedy(1))
    before = {k: [t.clone() for t in b.ssm.values()] for k, b in eng.prefix._blocks.items()}
    eng.generate(prompt, _greedy(20))
    for k, b in eng.prefix._blocks.items():
        if k in before:
            assert all(torch.equal(x, y) for x, y in zip(before[k], b.ssm.values(), strict=True))
