"""Prefix cache for the hybrid model: KV blocks plus Mamba state snapshots, exact and bounded.

Paged-attention engines share a prompt prefix by reusing its KV blocks. A Mamba layer has no per-token cache
to share, only the recurrent state after the whole prefix, so a hybrid model can reuse a prefix only where
that state was kept. This cache keeps everything the network needs to go on from a cached point exactly as if it
had just prefilled the prefix itself:

- blocks of `block_size` tokens, keyed by a hash chain over their token ids (block b's key hashes block b-1's
  key and block b's tokens), as paged KV caches do; each holds the attention layers' K and V of its positions
  (backbone, and the MTP block's) and, when it was taken while prefilling, a snapshot of every Mamba layer's
  conv and SSM state *at the block boundary* plus the final-normed hidden state of its last position;
- tails, taken when a request finishes: the Mamba state after everything the request consumed (any length L,
  not only a block boundary), the KV of the positions after its last whole block, and the token that comes
  next (the request's last output): a follow-up prompt that continues the conversation with that exact text
  restores all L positions. The request's whole blocks past the prompt are stored as KV-only blocks.

Every entry keeps its tokens and they are compared on every hit, so a hash collision can never serve another
prefix. A request takes the longest cached point -- a block with a state snapshot or a tail -- that leaves at
least one prompt token to prefill (the last prompt token must run to give the first logits), restores it into
its slot and prefills only the rest (`lookup`, `restore`). Snapshots are inserted complete, after the tokens
they hold have run (`insert`, `insert_finished`): nothing half-written is ever visible, whatever happens to the
request later.

Memory is bounded by `budget_bytes`: the least recently used leaf entry goes first (an entry is evicted only
once nothing cached extends it, and a hit touches its chain from the last entry back to the first), so
eviction trims chains from their ends and every cached entry stays reachable.

MTP: the MTP block's KV entry at position t pairs (h_t, x_{t+1}), so it belongs to the token after t. A block
b therefore stores the MTP entries of positions bB-1 .. (b+1)B-2 (each paired with a token of block b, which
its key covers); restoring n blocks gives the MTP cache n*B-1 valid entries, and the engine recomputes the one
at position n*B-1 from the stored hidden state and the new prompt's next token. A tail stores the MTP entries
up to L-1, the last paired with its next token. Everything restored is bit-identical to what a fresh prefill of
the same tokens writes.
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
    tokens: tuple[int, ...]  # a block: its block_size tokens; a tail: the positions it holds + the next token
    start: int  # first position it holds
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (k, v) [nkv, positions, hd]
    mtp_kv: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (k, v) of positions mtp_start..
    mtp_start: int
    conv: dict[int, torch.Tensor] | None  # layer -> [conv_dim, K-1] after this entry (None: KV only)
    ssm: dict[int, torch.Tensor] | None  # layer -> [H, P, N]
    hidden: torch.Tensor | None  # [hidden]: final-normed h of a block's last position (MTP)
    tail: bool = False
    nbytes: int = 0
    children: int = 0

    @property
    def end(self) -> int:
        """Positions restored through this entry (a tail's next token is not one of them)."""
        return self.start + len(self.tokens) - (1 if self.tail else 0)


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
    """What `lookup` found for one prompt: the entries to restore, in order (may be empty)."""

    blocks: list[_Block] = field(default_factory=list)  # whole blocks, then possibly one tail
    eligible: int = 0  # whole prompt blocks that could have been reused

    @property
    def tokens(self) -> int:
        return self.blocks[-1].end if self.blocks else 0


def _nbytes(*groups) -> int:
    n = 0
    for g in groups:
        for v in g.values():
            for t in v if isinstance(v, tuple) else (v,):
                n += t.numel() * t.element_size()
    return n


def _chain_key(prev: bytes, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(prev, digest_size=16)
    h.update(struct.pack(f"<{len(tokens)}q", *tokens))
    return h.digest()


def block_keys(ids: list[int], block_size: int, n_blocks: int | None = None) -> list[bytes]:
    """Hash-chain keys of the first `n_blocks` whole blocks of `ids` (all whole blocks by default)."""
    n = len(ids) // block_size if n_blocks is None else n_blocks
    keys, prev = [], b""
    for b in range(n):
        prev = _chain_key(prev, ids[b * block_size : (b + 1) * block_size])
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
        self._tails: dict[bytes | None, set[bytes]] = {}  # parent block key -> keys of the tails under it
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
        self._tails.clear()
        self.used_bytes = 0

    # ------------------------------------------------------------------ lookup / restore
    def lookup(self, ids: list[int]) -> PrefixHit:
        """The longest cached point of `ids` (a block with a state snapshot, or a tail) that leaves >= 1 token
        to prefill; the entries on its chain are touched as used."""
        B = self.block_size
        eligible = (len(ids) - 1) // B
        hit = PrefixHit(eligible=eligible)
        self.stats.lookups += 1
        self.stats.looked_up_blocks += eligible
        if not self._blocks:
            return hit
        chain: list[_Block] = []
        best: list[_Block] = []
        parent: bytes | None = None
        for b in range(len(ids) // B + 1):
            tail = self._tail_for(parent, ids, b * B)
            if tail is not None and tail.end > (best[-1].end if best else 0):
                best = [*chain, tail]
            if b >= eligible:
                break
            key = _chain_key(parent or b"", ids[b * B : (b + 1) * B])
            blk = self._blocks.get(key)
            if blk is None or blk.tail or blk.tokens != tuple(ids[b * B : (b + 1) * B]):
                break
            chain.append(blk)
            parent = key
            if blk.conv is not None and blk.end > (best[-1].end if best else 0):
                best = list(chain)
        hit.blocks = best
        for blk in reversed(best):  # children older than their parents: eviction trims chain ends first
            self._blocks.move_to_end(blk.key)
        if best:
            self.stats.hit_requests += 1
            self.stats.reused_blocks += hit.tokens // B
            self.stats.reused_tokens += hit.tokens
        return hit

    def _tail_for(self, parent: bytes | None, ids: list[int], start: int) -> _Block | None:
        """The longest tail under `parent` whose tokens (held positions + next token) continue ids at `start`."""
        best = None
        for key in self._tails.get(parent, ()):
            t = self._blocks[key]
            n = len(t.tokens)
            if (
                len(ids) >= start + n
                and tuple(ids[start : start + n]) == t.tokens
                and (best is None or n > len(best.tokens))
            ):
                best = t
        return best

    def restore(self, hit: PrefixHit, row: int) -> torch.Tensor | None:
        """Write `hit`'s entries into cache row `row` (a freshly acquired slot): the KV of every entry, the Mamba
        state of the last; lengths = the restored positions. Ending on a block with MTP, the MTP cache gets one
        entry less and the block's last hidden state is returned (the MTP block's next input pairs it with the
        prompt's next token); otherwise None."""
        if not hit.blocks:
            return None
        c, m = self.cache, self.mtp_cache
        for blk in hit.blocks:
            s = slice(blk.start, blk.start + next(iter(blk.kv.values()))[0].shape[1]) if blk.kv else None
            for i, (k, v) in blk.kv.items():
                c.kv[i][0][row, :, s] = k
                c.kv[i][1][row, :, s] = v
            if m is not None:
                for i, (k, v) in blk.mtp_kv.items():
                    ms = slice(blk.mtp_start, blk.mtp_start + k.shape[1])
                    m.kv[i][0][row, :, ms] = k
                    m.kv[i][1][row, :, ms] = v
        last = hit.blocks[-1]
        for i, t in (last.conv or {}).items():
            c.conv[i][row] = t
        for i, t in (last.ssm or {}).items():
            c.ssm[i][row] = t
        n = last.end
        c.lengths[row] = n
        if m is None:
            return None
        if last.tail:
            m.lengths[row] = n
            return None
        m.lengths[row] = n - 1
        assert last.hidden is not None, "a snapshotted block of an MTP engine keeps its last hidden state"
        return last.hidden.view(1, 1, -1)

    # ------------------------------------------------------------------ insert / evict
    def contains(self, key: bytes) -> bool:
        return key in self._blocks

    def _copy(self, row: int, start: int, end: int, mtp_end: int):
        """Clones of row `row`'s KV at positions start..end and MTP KV at max(0, start-1)..mtp_end."""
        c, m = self.cache, self.mtp_cache
        s = slice(start, end)
        kv = (
            {i: (k[row, :, s].clone(), v[row, :, s].clone()) for i, (k, v) in c.kv.items()}
            if end > start
            else {}
        )
        ms = max(0, start - 1)
        mtp_kv = (
            {i: (k[row, :, ms:mtp_end].clone(), v[row, :, ms:mtp_end].clone()) for i, (k, v) in m.kv.items()}
            if m is not None and mtp_end > ms
            else {}
        )
        return kv, mtp_kv, ms

    def insert(
        self,
        key: bytes,
        parent: bytes | None,
        tokens: list[int],
        row: int,
        hidden: torch.Tensor | None,
        *,
        state: bool = True,
    ) -> bool:
        """Store block `tokens` (ending exactly at cache row `row`'s current length when `state`, else at any
        earlier block boundary `end`) under `key`, with a snapshot of the Mamba state when `state`. The parent
        must be cached (else the chain could never be reached). False when not stored (already there, parent
        gone, or larger than the whole budget)."""
        B, c, m = self.block_size, self.cache, self.mtp_cache
        if len(tokens) != B:
            raise RuntimeStateError(f"a prefix block holds {B} tokens, got {len(tokens)}")
        end = int(c.lengths[row])
        if end % B or end < B:
            raise RuntimeStateError(f"row {row} is at length {end}, not at a block boundary of {B}")
        if m is not None and (hidden is None or int(m.lengths[row]) < end - 1):
            raise RuntimeStateError("an MTP snapshot needs the block's last hidden state and its MTP entries")
        return self._insert_block(key, parent, tokens, row, end, hidden, state=state)

    def _insert_block(self, key, parent, tokens, row, end, hidden, *, state: bool) -> bool:
        if key in self._blocks or (parent is not None and parent not in self._blocks):
            return False
        c, m = self.cache, self.mtp_cache
        B = self.block_size
        kv, mtp_kv, ms = self._copy(row, end - B, end, end - 1)
        conv = {i: t[row].clone() for i, t in c.conv.items()} if state else None
        ssm = {i: t[row].clone() for i, t in c.ssm.items()} if state else None
        h = hidden.detach().reshape(-1).float().clone() if (state and m is not None) else None
        blk = _Block(key, parent, tuple(tokens), end - B, kv, mtp_kv, ms, conv, ssm, h)
        return self._add(blk)

    def insert_finished(self, tokens: list[int], next_token: int, row: int) -> bool:
        """A finished request: `tokens` is everything it consumed (its cache row holds exactly these positions),
        `next_token` its last output. Stores its whole blocks past those cached (KV only) and a tail with the
        Mamba state after all of them. False when nothing new could be stored."""
        c, m = self.cache, self.mtp_cache
        B, L = self.block_size, len(tokens)
        if int(c.lengths[row]) != L or (m is not None and int(m.lengths[row]) != L):
            return False  # not a state this cache can describe (should not happen; never store a guess)
        keys = block_keys(tokens, B)
        parent = None
        for b, key in enumerate(keys):
            if key not in self._blocks and not self._insert_block(
                key, parent, tokens[b * B : (b + 1) * B], row, (b + 1) * B, None, state=False
            ):
                return False
            parent = key
        start = len(keys) * B
        tail_tokens = (*tokens[start:], next_token)
        key = _chain_key(parent if parent is not None else b"tail", list(tail_tokens))
        if key in self._blocks:
            return False
        kv, mtp_kv, ms = self._copy(row, start, L, L)
        conv = {i: t[row].clone() for i, t in c.conv.items()}
        ssm = {i: t[row].clone() for i, t in c.ssm.items()}
        return self._add(_Block(key, parent, tail_tokens, start, kv, mtp_kv, ms, conv, ssm, None, tail=True))

    def _add(self, blk: _Block) -> bool:
        blk.nbytes = _nbytes(blk.kv, blk.mtp_kv, blk.conv or {}, blk.ssm or {}) + (
            blk.hidden.numel() * 4 if blk.hidden is not None else 0
        )
        if blk.nbytes > self.budget_bytes or not self._evict(self.budget_bytes - blk.nbytes, keep=blk.parent):
            return False
        self._blocks[blk.key] = blk
        if blk.parent is not None:
            self._blocks[blk.parent].children += 1
        if blk.tail:
            self._tails.setdefault(blk.parent, set()).add(blk.key)
        self.used_bytes += blk.nbytes
        self.stats.inserted_blocks += 1
        return True

    def _evict(self, limit: int, keep: bytes | None = None) -> bool:
        """Drop least recently used leaf entries (never `keep`) until used_bytes <= limit. False if only `keep`
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
            if blk.tail:
                self._tails[blk.parent].discard(victim)
        return True

    def report(self) -> dict[str, float]:
        return {
            **self.stats.as_dict(),
            "blocks": len(self._blocks),
            "used_bytes": self.used_bytes,
            "budget_bytes": self.budget_bytes,
            "block_size": self.block_size,
        }
