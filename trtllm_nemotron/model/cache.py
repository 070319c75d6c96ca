"""HybridCache: per-row decoding state for a batch of sequences (spec §4.2, §4.3.3).

One cache serves one layer stack (the backbone, or the MTP block via `allocate_mtp`). Rows are sequence
slots; each row has its own length, so rows at different positions decode together:
- attention layer i: `kv[i] = (k, v)`, each `[rows, nkv, max_seq_len, hd]` in the model dtype; positions
  `>= lengths[row]` are garbage and masked;
- Mamba layer i: `conv[i]` `[rows, conv_dim, K-1]` (last K-1 raw pre-conv inputs, model dtype) and
  `ssm[i]` `[rows, H, P, N]` (float32 by default, float16 as an option);
- `lengths` `[rows]` int64: tokens already consumed by each row.

The network writes new KV at `lengths[row]..`, updates Mamba states, then advances `lengths` for the rows it
ran (and remembers them: `last_rows`, `last_start`).

Speculative verification appends T>1 tokens and then keeps only a prefix per row, one way (the runtime's
eager step backend uses it; the native step keeps the same record inside its library):
`keep_steps = True` before the verify forward: the Mamba layers run the recurrent step
(`ops.mamba_decode_step(keep_steps=True)`, the plugin's multi-token mode) and keep the state after every step
in `steps[i]`; then `commit(n_keep)` sets each row to its state after `n_keep[b]` tokens (attention: just the
length; stale KV beyond it is masked). Set `keep_steps = False` afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.errors import RuntimeStateError


def _rows(rows, n: int, device) -> torch.Tensor:
    if rows is None:
        return torch.arange(n, device=device)
    return torch.as_tensor(rows, dtype=torch.long, device=device).reshape(-1)


@dataclass
class HybridCache:
    pattern: str
    max_seq_len: int
    lengths: torch.Tensor  # [rows] int64
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    conv: dict[int, torch.Tensor] = field(default_factory=dict)
    ssm: dict[int, torch.Tensor] = field(default_factory=dict)
    keep_steps: bool = False  # multi-token appends keep per-step Mamba states (speculative verification)
    steps: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )  # i -> (ssm, conv) steps
    last_rows: torch.Tensor | None = None  # rows of the last forward
    last_start: torch.Tensor | None = None  # their lengths before it

    @classmethod
    def allocate(
        cls,
        cfg: NemotronHConfig,
        batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        ssm_dtype: torch.dtype = torch.float32,
        *,
        pattern: str | None = None,
    ) -> HybridCache:
        """Zeroed state for `batch_size` rows of up to `max_seq_len` tokens; `pattern` defaults to the backbone's."""
        if ssm_dtype not in (torch.float32, torch.float16):
            raise RuntimeStateError(f"ssm_dtype must be torch.float32 or torch.float16, got {ssm_dtype}")
        if batch_size < 1 or max_seq_len < 1:
            raise RuntimeStateError(
                f"cache needs batch_size >= 1 and max_seq_len >= 1, got {batch_size}, {max_seq_len}"
            )
        pattern = cfg.pattern if pattern is None else pattern
        c = cls(pattern, max_seq_len, torch.zeros(batch_size, dtype=torch.long, device=device))
        for i, ch in enumerate(pattern):
            if ch == "*":
                shape = (batch_size, cfg.num_key_value_heads, max_seq_len, cfg.head_dim)
                c.kv[i] = (
                    torch.zeros(shape, dtype=dtype, device=device),
                    torch.zeros(shape, dtype=dtype, device=device),
                )
            elif ch == "M":
                c.conv[i] = torch.zeros(
                    batch_size, cfg.conv_dim, cfg.conv_kernel - 1, dtype=dtype, device=device
                )
                c.ssm[i] = torch.zeros(
                    batch_size,
                    cfg.mamba_num_heads,
                    cfg.mamba_head_dim,
                    cfg.ssm_state_size,
                    dtype=ssm_dtype,
                    device=device,
                )
        return c

    @classmethod
    def allocate_mtp(
        cls,
        cfg: NemotronHConfig,
        batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        ssm_dtype: torch.dtype = torch.float32,
    ) -> HybridCache:
        """Cache for the MTP block's sublayers (keys = index into `model.mtp.layers`)."""
        pattern = cfg.mtp_pattern * cfg.num_nextn_predict_layers
        return cls.allocate(cfg, batch_size, max_seq_len, dtype, device, ssm_dtype, pattern=pattern)

    @staticmethod
    def bytes_per_row(
        cfg: NemotronHConfig,
        max_seq_len: int,
        dtype=torch.bfloat16,
        ssm_dtype=torch.float32,
        pattern: str | None = None,
    ) -> int:
        """Memory one row needs, without allocating (for capacity planning)."""
        pattern = cfg.pattern if pattern is None else pattern
        es, ss = (
            torch.tensor([], dtype=dtype).element_size(),
            torch.tensor([], dtype=ssm_dtype).element_size(),
        )
        n_attn, n_mamba = pattern.count("*"), pattern.count("M")
        kv = n_attn * 2 * cfg.num_key_value_heads * max_seq_len * cfg.head_dim * es
        conv = n_mamba * cfg.conv_dim * (cfg.conv_kernel - 1) * es
        ssm = n_mamba * cfg.mamba_num_heads * cfg.mamba_head_dim * cfg.ssm_state_size * ss
        return kv + conv + ssm + 8

    # ---- bookkeeping ----
    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def device(self) -> torch.device:
        return self.lengths.device

    def tensors(self) -> list[torch.Tensor]:
        out = [self.lengths]
        for k, v in self.kv.values():
            out += [k, v]
        return out + list(self.conv.values()) + list(self.ssm.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by all state tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def memory_report(self) -> dict[str, int]:
        kv = sum(k.numel() * k.element_size() * 2 for k, _ in self.kv.values())
        conv = sum(t.numel() * t.element_size() for t in self.conv.values())
        ssm = sum(t.numel() * t.element_size() for t in self.ssm.values())
        return {"kv": kv, "conv": conv, "ssm": ssm, "total": self.nbytes}

    def rows(self, rows=None) -> torch.Tensor:
        """Row indices as an int64 tensor on the cache device (None = all rows)."""
        return _rows(rows, self.batch_size, self.device)

    def check_room(self, rows: torch.Tensor, T: int) -> None:
        if int(rows.min()) < 0 or int(rows.max()) >= self.batch_size:
            raise RuntimeStateError(f"cache rows {rows.tolist()} out of range 0..{self.batch_size - 1}")
        need = int(self.lengths[rows].max()) + T
        if need > self.max_seq_len:
            raise RuntimeStateError(
                f"sequence would reach {need} tokens but the cache holds max_seq_len={self.max_seq_len}; "
                "allocate a larger cache or shorten the prompt/generation"
            )

    def advance(self, rows: torch.Tensor, T: int) -> None:
        self.last_rows, self.last_start = rows.clone(), self.lengths[rows].clone()
        self.lengths[rows] += T

    def commit(self, n_keep) -> None:
        """After a `keep_steps` forward of T tokens over `last_rows`: keep the first n_keep[b] (1..T) tokens
        of each row b (Mamba state after that step, length = start + n_keep)."""
        if self.last_rows is None or self.last_start is None or (self.conv and not self.steps):
            raise RuntimeStateError("commit() needs a preceding forward with cache.keep_steps = True")
        rows = self.last_rows
        n = torch.as_tensor(n_keep, dtype=torch.long, device=self.device).reshape(-1)
        T = next(iter(self.steps.values()))[0].shape[1] if self.steps else int(n.max())
        if n.numel() != rows.numel() or int(n.min()) < 1 or int(n.max()) > T:
            raise RuntimeStateError(f"commit: n_keep {n.tolist()} must have {rows.numel()} entries in 1..{T}")
        b = torch.arange(rows.numel(), device=self.device)
        for i, (ssm_steps, conv_steps) in self.steps.items():
            self.ssm[i][rows] = ssm_steps[b, n - 1]
            self.conv[i][rows] = conv_steps[b, n - 1]
        self.lengths[rows] = self.last_start + n
        self.steps.clear()

    def reset(self, rows=None) -> None:
        """Zero the state of `rows` (None = all): a fresh sequence. KV need not be cleared (masked by length)."""
        r = self.rows(rows)
        self.lengths[r] = 0
        self.steps.clear()
        for t in list(self.conv.values()) + list(self.ssm.values()):
            t[r] = 0
