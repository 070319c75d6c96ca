"""Prefix cache for the hybrid model: KV blocks plus Mamba state snapshots at block boundaries.

Paged-attention engines share a prompt prefix by reusing its KV blocks. A Mamba layer has no per-token cache
to share, only the recurrent state after the whole prefix, so a hybrid model can reuse a prefix only where
that state was kept. This cache keeps, for every cached block boundary, everything the network needs to go on
from there exactly as if it had just prefilled the prefix itself:

- the attention layers' K and V of the block's `block_size` positions (backbone, and the MTP block's);
- every Mamba layer's conv and SSM state *at the boundary* (after the block's last token);
- the final-normed hidden state of the block's last position (the MTP block's next input pairs it with the
  token after the boundary, which the cached prefix does not know).

Blocks are keyed by a hash chain over their token ids (the key of block b hashes the key of block b-1 and
block b's tokens), as paged KV caches do; each entry also keeps its tokens and they are compared on every hit,
so a hash collision can never serve another prefix. A request takes the longest cached chain of whole blocks
that leaves at least one prompt token to prefill (the last prompt token must run to give the first logits),
restores it into its slot, and prefills only the rest (`restore`). Snapshots are taken while prefilling, at
the block boundaries (`insert`, after the block has run: nothing half-written is ever visible, whatever
happens to the request later).

Memory is bounded by `budget_bytes`: the least recently used leaf block goes first (a block is evicted only
once no cached block extends it, and a hit touches its chain from the last block back to the first), so
eviction trims chains from their ends and every cached block stays reachable.

MTP: the MTP block's KV entry at position t pairs (h_t, x_{t+1}); the entry at a block's last position
depends on the token after the boundary, so `restore` sets the MTP cache length to one less than the
backbone's and hands back h of that position; the engine recomputes that one MTP entry with the new prompt's
next token. Everything else restored is bit-identical to what a fresh prefill would have written.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from trtllm_nemotron.errors import RuntimeStateError


@dataclass
class _Block:
    key: bytes
    parent: bytes | None
    tokens: tuple[int, ...]
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (k, v) [nkv, block, hd]
    mtp_kv: dict[int, tuple[torch.Tensor, torch.Tensor]]
    conv: dict[int, torch.Tensor]  # layer -> [conv_dim, K-1] at the boundary
    ssm: dict[int, torch.Tensor]  # layer -> [H, P, N] at the boundary
    hidden: torch.Tensor | None  # [hidden]: final-normed h of the block's last position (MTP)
    nbytes: int = 0
    children: int = 0


@dataclass
class PrefixStats:
    """Counters since the cache was made (`as_dict` for metrics)."""

    lookups: int = 0
    hit_requests: int = 0
    looked_up_blocks: int = 0  # whole prompt blocks eligible for reuse, over all lookups
    reused_blocks: int = 0
    reused_tokens: int = 0
    inserted_blocks: int = 0
    evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.reused_blocks / self.looked_up_blocks if self.looked_up_blocks else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "hit_rate": self.hit_rate}


@dataclass
class PrefixHit:
    """What `lookup` found for one prompt: the chain of blocks to restore (may be empty)."""

    blocks: list[_Block] = field(default_factory=list)
    eligible: int = 0  # whole blocks of the prompt that could have been reused

    @property
    def tokens(self) -> int:
        return sum(len(b.tokens) for b in self.blocks)


def _nbytes(*groups) -> int:
    n = 0
    for g in groups:
        for v in g.values():
            for t in v if isinstance(v, tuple) else (v,):
                n += t.numel() * t.element_size()
    return n


def block_keys(ids: list[int], block_size: int, n_blocks: int | None = None) -> list[bytes]:
    """Hash-chain keys of the first `n_blocks` whole blocks of `ids` (all whole blocks by default)."""
    n = len(ids) // block_size if n_blocks is None else n_blocks
    keys, prev = [], b""
    for b in range(n):
        blk = ids[b * block_size : (b + 1) * block_size]
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(struct.pack(f"<{len(blk)}q", *blk))
        prev = h.digest()
        keys.append(prev)
    return keys


def default_budget_bytes(
    cfg,
    block_size: int,
    *,
    mtp: bool,
    max_batch_size: int,
    max_seq_len: int,
    dtype=torch.float32,
    ssm_dtype=torch.float32,
    host_bytes: int | None = None,
) -> int:
    """The budget used when none is given: room for as many prefix tokens as the slot pool holds
    (max_batch_size x max_seq_len, in whole blocks), capped at a quarter of the host's memory."""
    per_block = PrefixCache.bytes_per_block(cfg, block_size, mtp=mtp, dtype=dtype, ssm_dtype=ssm_dtype)
    want = per_block * -(-max_batch_size * max_seq_len // block_size)
    if host_bytes is None:
        import os

        try:
            host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            host_bytes = 16 * 2**30
    return min(want, host_bytes // 4)


class PrefixCache:
    """LRU store of prefix blocks for one engine's cache layout (see the module docstring)."""

    def __init__(self, cache, mtp_cache, *, block_size: int, budget_bytes: int, hidden_size: int) -> None:
        if block_size < 1:
            raise RuntimeStateError(f"prefix cache block size must be >= 1, got {block_size}")
        if budget_bytes < 0:
            raise RuntimeStateError(f"prefix cache budget must be >= 0 bytes, got {budget_bytes}")
        self.block_size = block_size
        self.budget_bytes = budget_bytes
        self.cache = cache
        self.mtp_cache = mtp_cache
        self.hidden_size = hidden_size
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()  # LRU order: oldest first
        self.used_bytes = 0
        self.stats = PrefixStats()

    # ------------------------------------------------------------------ sizes
    @staticmethod
    def bytes_per_block(
        cfg, block_size: int, *, mtp: bool, dtype=torch.float32, ssm_dtype=torch.float32
    ) -> int:
        """Bytes one cached block holds for model config `cfg` (the memory plan reports this)."""
        es = torch.tensor([], dtype=dtype).element_size()
        ss = torch.tensor([], dtype=ssm_dtype).element_size()
        kv_layers = cfg.pattern.count("*") + (
            cfg.mtp_pattern.count("*") * cfg.num_nextn_predict_layers if mtp else 0
        )
        n_mamba = cfg.pattern.count("M")
        kv = kv_layers * 2 * cfg.num_key_value_heads * block_size * cfg.head_dim * es
        conv = n_mamba * cfg.conv_dim * (cfg.conv_kernel - 1) * es
        ssm = n_mamba * cfg.mamba_num_heads * cfg.mamba_head_dim * cfg.ssm_state_size * ss
        return kv + conv + ssm + (cfg.hidden_size * 4 if mtp else 0)

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()
        self.used_bytes = 0

    # ------------------------------------------------------------------ lookup / restore
    def lookup(self, ids: list[int]) -> PrefixHit:
        """The longest cached chain of whole blocks of `ids` leaving >= 1 token to prefill (touched as used)."""
        B = self.block_size
        eligible = (len(ids) - 1) // B
        hit = PrefixHit(eligible=eligible)
        self.stats.lookups += 1
        self.stats.looked_up_blocks += eligible
        if not eligible or not self._blocks:
            return hit
        for b, key in enumerate(block_keys(ids, B, eligible)):
            blk = self._blocks.get(key)
            if blk is None or blk.tokens != tuple(ids[b * B : (b + 1) * B]):
                break
            hit.blocks.append(blk)
        for blk in reversed(hit.blocks):  # children older than their parents: eviction trims chain ends first
            self._blocks.move_to_end(blk.key)
        if hit.blocks:
            self.stats.hit_requests += 1
            self.stats.reused_blocks += len(hit.blocks)
            self.stats.reused_tokens += hit.tokens
        return hit

    def restore(self, hit: PrefixHit, row: int) -> torch.Tensor | None:
        """Write `hit`'s blocks into cache row `row` (a freshly acquired slot): KV of every block, the Mamba
        states of the last; lengths = the prefix length (the MTP cache's one less). Returns the hidden state of
        the prefix's last position (for the MTP block's next pair) or None without MTP / for an empty hit."""
        if not hit.blocks:
            return None
        B, c, m = self.block_size, self.cache, self.mtp_cache
        for b, blk in enumerate(hit.blocks):
            s = slice(b * B, (b + 1) * B)
            for i, (k, v) in blk.kv.items():
                c.kv[i][0][row, :, s] = k
                c.kv[i][1][row, :, s] = v
            if m is not None:
                for i, (k, v) in blk.mtp_kv.items():
                    m.kv[i][0][row, :, s] = k
                    m.kv[i][1][row, :, s] = v
        last = hit.blocks[-1]
        for i, t in last.conv.items():
            c.conv[i][row] = t
        for i, t in last.ssm.items():
            c.ssm[i][row] = t
        n = len(hit.blocks) * B
        c.lengths[row] = n
        if m is not None:
            m.lengths[row] = n - 1
            return last.hidden.view(1, 1, -1)
        return None

    # ------------------------------------------------------------------ insert / evict
    def contains(self, key: bytes) -> bool:
        return key in self._blocks

    def insert(
        self, key: bytes, parent: bytes | None, tokens: list[int], row: int, hidden: torch.Tensor | None
    ) -> bool:
        """Snapshot block `tokens` (ending exactly at cache row `row`'s current length) under `key`. The parent
        block must be cached (else the chain could never be reached). False when not stored (already there,
        parent gone, or larger than the whole budget)."""
        B, c, m = self.block_size, self.cache, self.mtp_cache
        if len(tokens) != B:
            raise RuntimeStateError(f"a prefix block holds {B} tokens, got {len(tokens)}")
        end = int(c.lengths[row])
        if end % B or end < B:
            raise RuntimeStateError(f"row {row} is at length {end}, not at a block boundary of {B}")
        if key in self._blocks or (parent is not None and parent not in self._blocks):
            return False
        if m is not None and (hidden is None or int(m.lengths[row]) < end):
            raise RuntimeStateError("an MTP snapshot needs the block's last hidden state and its MTP entries")
        s = slice(end - B, end)
        kv = {i: (k[row, :, s].clone(), v[row, :, s].clone()) for i, (k, v) in c.kv.items()}
        mtp_kv = (
            {}
            if m is None
            else {i: (k[row, :, s].clone(), v[row, :, s].clone()) for i, (k, v) in m.kv.items()}
        )
        conv = {i: t[row].clone() for i, t in c.conv.items()}
        ssm = {i: t[row].clone() for i, t in c.ssm.items()}
        h = None if m is None else hidden.detach().reshape(-1).float().clone()
        blk = _Block(key, parent, tuple(tokens), kv, mtp_kv, conv, ssm, h)
        blk.nbytes = _nbytes(kv, mtp_kv, conv, ssm) + (h.numel() * 4 if h is not None else 0)
        if blk.nbytes > self.budget_bytes:
            return False
        if not self._evict(self.budget_bytes - blk.nbytes, keep=parent):
            return False
        self._blocks[key] = blk
        if parent is not None:
            self._blocks[parent].children += 1
        self.used_bytes += blk.nbytes
        self.stats.inserted_blocks += 1
        return True

    def _evict(self, limit: int, keep: bytes | None = None) -> bool:
        """Drop least recently used leaf blocks (never `keep`) until used_bytes <= limit. False if only `keep`
        and its ancestors are left: a chain's first blocks are the ones prompts share, so a chain longer than
        the budget keeps its head rather than its tail."""
        while self.used_bytes > limit:
            victim = next((k for k, b in self._blocks.items() if b.children == 0 and k != keep), None)
            if victim is None:
                return False
            blk = self._blocks.pop(victim)
            self.used_bytes -= blk.nbytes
            self.stats.evicted_blocks += 1
            if blk.parent is not None:
                self._blocks[blk.parent].children -= 1
        return True

    def report(self) -> dict[str, float]:
        return {
            **self.stats.as_dict(),
            "blocks": len(self._blocks),
            "used_bytes": self.used_bytes,
            "budget_bytes": self.budget_bytes,
            "block_size": self.block_size,
        }
