"""The hybrid cache manager: a fixed pool of sequence slots.

One `HybridCache` row per slot holds that sequence's KV for the attention layers and conv + SSM state for
the Mamba layers (SSM state float32 by default, float16 as an option; spec §4.3.3); with MTP a second
`HybridCache` (the MTP block's attention KV) shares the slot numbering. Everything is allocated once, up
front, so memory is known before the first request: `memory_report()` gives the bytes per kind and per slot.

Each row holds `max_seq_len + slack` positions: speculative verification writes up to 1 + max_draft_len
tokens (and the MTP block up to 2 * max_draft_len + 1 positions) past the last committed one before it knows
how many are accepted; those positions are never read beyond the committed length.

`acquire()` hands out a free slot (zeroed state); `release(slot)` resets it and returns it to the pool; both
are called by the engine when a request starts and when it finishes or is cancelled.
"""

from __future__ import annotations

import torch

from trtllm_nemotron.errors import RuntimeStateError


class SlotPool:
    def __init__(
        self,
        model,
        max_batch_size: int,
        max_seq_len: int,
        *,
        mtp: int = 0,
        ssm_dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_batch_size < 1:
            raise RuntimeStateError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.mtp = mtp  # draft tokens per verification (0: no MTP cache)
        self.slack = 2 * mtp + 2
        self.capacity = max_seq_len + self.slack  # positions per row
        self.cache = model.allocate_cache(max_batch_size, self.capacity, ssm_dtype=ssm_dtype)
        self.mtp_cache = (
            model.allocate_cache(max_batch_size, self.capacity, ssm_dtype=ssm_dtype, mtp=True)
            if mtp
            else None
        )
        self._free = list(range(max_batch_size))
        self.in_use: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def acquire(self) -> int:
        if not self._free:
            raise RuntimeStateError(
                f"all {self.max_batch_size} sequence slots are busy; wait for a request to finish or load "
                "the engine with a larger max_batch_size"
            )
        slot = self._free.pop(0)
        self.in_use.add(slot)
        self._reset(slot)
        return slot

    def release(self, slot: int) -> None:
        if slot not in self.in_use:
            return
        self.in_use.discard(slot)
        self._reset(slot)
        self._free.append(slot)
        self._free.sort()

    def _reset(self, slot: int) -> None:
        self.cache.reset([slot])
        if self.mtp_cache is not None:
            self.mtp_cache.reset([slot])

    def memory_report(self) -> dict[str, int]:
        """Bytes held: kv, conv, ssm (backbone), mtp_kv, total, per_slot, and slots / slots_free."""
        rep = dict(self.cache.memory_report())
        mtp = self.mtp_cache.nbytes if self.mtp_cache is not None else 0
        rep["mtp_kv"] = mtp
        rep["total"] = rep["total"] + mtp
        rep["per_slot"] = rep["total"] // self.cache.batch_size
        rep["slots"] = self.max_batch_size
        rep["slots_free"] = self.num_free
        return rep
