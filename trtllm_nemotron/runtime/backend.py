"""`StepBackend`: the interface between the engine loop and an implementation of the network's steps.

The engine (runtime/engine.py) owns requests, sampling, acceptance and emission; a backend owns the maths of
running tokens through the network on the slot pool's caches. Everything a backend does is in terms of cache
rows (`SlotPool` slots) and the caches' committed lengths (`pool.cache.lengths`, `pool.mtp_cache.lengths`),
which live in the pool and are shared by every backend.

A backend is constructed as `Backend(model, pool)` (model: `NemotronHForCausalLM`, its weights; pool: the
`SlotPool`, with `cache` and, with MTP, `mtp_cache`) and provides:

    name                                  the `backend=` name it is registered under
    unsupported_reason(model, pool)       classmethod: None if it can run this model and pool, else why not
    prefill(tokens, row)                  one prompt chunk of one row at its committed length -> final-normed
                                          hidden [1, T, hidden]; the committed length advances by T
    decode(tokens, rows)                  one token per row -> fp32 logits [batch, vocab]; lengths advance by 1
    decode_greedy(tokens, rows)           the same, argmax only -> list of next tokens (StepBackendBase: argmax
                                          of decode; a backend may do it in one call)
    verify(tokens, rows)                  T tokens per row ([last, d_1..d_K]) at the committed lengths ->
                                          (final-normed hidden [batch, T, hidden], fp32 logits [batch, T, vocab]);
                                          KV written at those positions and the Mamba state after every token
                                          recorded; the committed state is not changed until `commit`
    commit(rows, keep)                    after `verify`: keep the first keep[b] (1..T) tokens of row b: Mamba
                                          state after token keep[b]-1, length = start + keep[b] (attention KV
                                          past it is masked by the length: rolling back is setting the length)
    mtp(hidden, next_ids, rows, logits)   the MTP block (spec §4.7) over (h_t, x_{t+1}) pairs [batch, T] at the
                                          MTP cache's committed lengths -> (final-normed g [batch, T, hidden],
                                          fp32 draft logits [batch, T, vocab] or None); MTP lengths advance by T
    spec_greedy(tokens, rows)             a whole greedy MTP iteration: verify, accept (strict, spec §6.2),
                                          commit, draft -> (targets [batch][K+1], accepted [batch], drafts
                                          [batch][K]); both caches' lengths end past the last accepted token
                                          (StepBackendBase composes it from the primitives above)
    draft_after_prefill(g, logits, rows)  greedy drafts from the MTP output at the last prompt position
    draft_after_verify(h, targets, rows, start, keep)  the MTP block over the verified pairs, then drafts

`StepBackendBase` implements the last four from the primitives, so a new backend is one class deriving from
it with `name`, `unsupported_reason`, `prefill`, `decode`, `verify`, `commit` and `mtp`, plus one
`register(...)` call (the engine resolves `backend=` names through `BACKENDS`; `backend="auto"` tries the
names of `AUTO_ORDER` and takes the first that can run). The registered backends: "native" (the C++ CPU step,
runtime/native) and "eager" (the reference network's modules, runtime/torch_backend.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import torch

from trtllm_nemotron.errors import RuntimeStateError

if TYPE_CHECKING:
    from trtllm_nemotron.runtime.slots import SlotPool


@runtime_checkable
class StepBackend(Protocol):
    """See the module docstring for the contract of each method."""

    name: ClassVar[str]

    @classmethod
    def unsupported_reason(cls, model, pool: SlotPool) -> str | None: ...

    def prefill(self, tokens: list[int], row: int) -> torch.Tensor: ...

    def decode(self, tokens: list[int], rows: list[int]) -> torch.Tensor: ...

    def decode_greedy(self, tokens: list[int], rows: list[int]) -> list[int]: ...

    def verify(self, tokens: list[list[int]], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def commit(self, rows: list[int], keep: list[int]) -> None: ...

    def mtp(
        self, hidden: torch.Tensor, next_ids: torch.Tensor, rows: list[int], *, logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def spec_greedy(
        self, tokens: list[list[int]], rows: list[int]
    ) -> tuple[list[list[int]], list[int], list[list[int]]]: ...

    def draft_after_prefill(
        self, g: torch.Tensor, logits: torch.Tensor, rows: list[int]
    ) -> list[list[int]]: ...

    def draft_after_verify(
        self, h: torch.Tensor, targets: list[list[int]], rows: list[int], start: torch.Tensor, keep: list[int]
    ) -> list[list[int]]: ...


class StepBackendBase:
    """The compositions every backend shares (greedy decode, the greedy MTP iteration, drafting)."""

    name: ClassVar[str] = ""

    def __init__(self, model, pool: SlotPool) -> None:
        self.model = model
        self.pool = pool
        self.device = model.backbone.embeddings.weight.device
        self.draft_len = pool.mtp

    def _rows(self, rows: list[int]) -> torch.Tensor:
        return torch.tensor(rows, device=self.device)

    @classmethod
    def unsupported_reason(cls, model, pool: SlotPool) -> str | None:
        raise NotImplementedError

    def prefill(self, tokens: list[int], row: int) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: list[int], rows: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def verify(self, tokens: list[list[int]], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def commit(self, rows: list[int], keep: list[int]) -> None:
        raise NotImplementedError

    def mtp(self, hidden, next_ids, rows, *, logits=True):
        raise NotImplementedError

    def decode_greedy(self, tokens: list[int], rows: list[int]) -> list[int]:
        return self.decode(tokens, rows).argmax(-1).tolist()

    def spec_greedy(self, tokens: list[list[int]], rows: list[int]):
        start = self.pool.cache.lengths[self._rows(rows)].clone()
        h, logits = self.verify(tokens, rows)
        y = logits.argmax(-1)  # [batch, K+1]
        ids = torch.tensor(tokens, device=y.device)
        acc = (ids[:, 1:] == y[:, :-1]).long().cumprod(1).sum(1).tolist()  # leading d_i == y_{i-1}
        keep = [a + 1 for a in acc]
        self.commit(rows, keep)
        targets = y.tolist()
        return targets, acc, self.draft_after_verify(h, targets, rows, start, keep)

    def _mtp_lengths(self) -> torch.Tensor:
        if self.pool.mtp_cache is None:
            raise RuntimeStateError("drafting needs MTP (an engine loaded with mtp > 0)")
        return self.pool.mtp_cache.lengths

    def draft_after_verify(self, h, targets, rows, start, keep) -> list[list[int]]:
        """The MTP block over the K+1 verified pairs (h_t, y_t) at MTP positions start..; the entry of the last
        kept position drafts d'_1, then `draft_after_prefill` the rest. MTP lengths end at start + keep."""
        r = self._rows(rows)
        mlen = self._mtp_lengths()
        mlen[r] = start
        g, dl = self.mtp(h, torch.tensor(targets, device=self.device), rows)
        b = torch.arange(len(rows), device=self.device)
        j = torch.tensor(keep, device=self.device) - 1
        mlen[r] = start + j + 1
        return self.draft_after_prefill(g[b, j][:, None], dl[b, j], rows)

    def draft_after_prefill(self, g, logits, rows) -> list[list[int]]:
        """Greedy drafts: d_1 = argmax(logits [batch, vocab]), then K-1 recursive MTP applications on g
        [batch, 1, hidden] at the committed MTP lengths (provisional KV; the committed lengths are restored)."""
        r = self._rows(rows)
        mlen = self._mtp_lengths()
        committed = mlen[r].clone()
        d = logits.argmax(-1)  # [batch]
        out = [d]
        for _ in range(self.draft_len - 1):
            g, dl = self.mtp(g, d[:, None], rows)
            d = dl[:, 0].argmax(-1)
            out.append(d)
        mlen[r] = committed
        return torch.stack(out, dim=1).tolist()


BACKENDS: dict[str, type[StepBackendBase]] = {}
AUTO_ORDER: list[str] = []  # names `backend="auto"` tries, in order


def register(cls: type[StepBackendBase], *, auto: bool = False) -> type[StepBackendBase]:
    """Make `cls` available as `backend=cls.name` (and, with auto=True, a candidate of "auto")."""
    BACKENDS[cls.name] = cls
    if auto and cls.name not in AUTO_ORDER:
        AUTO_ORDER.append(cls.name)
    return cls


def backend_names() -> tuple[str, ...]:
    """The name "auto" and the registered names (the package's __init__ imports the built-in backends, so they are
    registered before anything in runtime/ runs)."""
    return ("auto", *BACKENDS)


def select(name: str, model, pool: SlotPool) -> type[StepBackendBase]:
    """The backend class for `backend=name`: "auto" -> the first of AUTO_ORDER that can run, else the
    fallback ("eager"); a named one -> that one, or RuntimeStateError saying why it cannot run here."""
    import logging

    names = backend_names()
    if name not in names:
        raise RuntimeStateError(f"backend must be one of {names}, got {name!r}")
    if name != "auto":
        cls = BACKENDS[name]
        why = cls.unsupported_reason(model, pool)
        if why is not None:
            raise RuntimeStateError(f"backend={name!r} cannot run here: {why}")
        return cls
    for cand in AUTO_ORDER:
        why = BACKENDS[cand].unsupported_reason(model, pool)
        if why is None:
            return BACKENDS[cand]
        logging.getLogger(__name__).info("%s step not used (%s)", cand, why)
    raise RuntimeStateError(f"no decode-step backend can run this model here (tried {AUTO_ORDER})")
