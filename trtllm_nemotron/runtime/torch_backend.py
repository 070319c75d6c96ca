"""The "eager" step backend: the reference network's own modules (`model/`) on the slot pool's caches.

This is the CUDA path and the CPU fallback. The modules dispatch their two hot ops to the plugin kernels
(`model/ops.py`: Triton on CUDA tensors, the torch references on CPU, `TRTLLM_NEMOTRON_KERNELS` to force
one), so on a GPU the decode step runs the Triton Mamba state update and routing kernels. Prefill chunks run
the chunked SSD scan; one-token decode steps the recurrent Mamba update; MTP verification sets the cache's
`keep_steps` (the plugin's multi-token mode keeps the state after every token) and `HybridCache.commit`
keeps the accepted prefix -- the one verify-and-rollback mechanism of the model and the runtime.

`torch.compile` is not used: the decode step of this path was measured with inductor on CPU only, where the
native step is faster still, and nothing was measured on a GPU (see docs/design.md).

On CPU a step whose work (tokens x active parameters) is below `SMALL_STEP_WORK` runs on one intra-op thread:
such a step is dominated by per-kernel thread synchronisation (measured on 2-core hosts: the 5.5M embedded
model decodes several times faster at batch 1 on one thread).
"""

from __future__ import annotations

import contextlib

import torch

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime.backend import StepBackendBase, register

SMALL_STEP_WORK = 2**25  # tokens x active parameters below which a CPU step runs on one thread


class TorchBackend(StepBackendBase):
    name = "eager"

    def __init__(self, model, pool) -> None:
        super().__init__(model, pool)
        self._active_params = model.config.parameter_counts()["active"]

    @classmethod
    def unsupported_reason(cls, model, pool) -> str | None:
        return None

    @contextlib.contextmanager
    def _threads(self, n_tokens: int):
        if self.device.type != "cpu" or n_tokens * self._active_params >= SMALL_STEP_WORK:
            yield
            return
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def _hidden(self, tokens: list[list[int]], rows: list[int], *, keep_steps: bool = False) -> torch.Tensor:
        ids = torch.tensor(tokens, device=self.device)
        cache = self.pool.cache
        with self._threads(ids.numel()):
            cache.keep_steps = keep_steps
            try:
                return self.model.hidden_states(ids, cache, rows=self._rows(rows))
            finally:
                cache.keep_steps = False

    def prefill(self, tokens: list[int], row: int) -> torch.Tensor:
        return self._hidden([tokens], [row])

    def decode(self, tokens: list[int], rows: list[int]) -> torch.Tensor:
        h = self._hidden([[t] for t in tokens], rows)
        return self.model.logits(h[:, 0])

    def verify(self, tokens: list[list[int]], rows: list[int]):
        h = self._hidden(tokens, rows, keep_steps=True)
        return h, self.model.logits(h)

    def commit(self, rows: list[int], keep: list[int]) -> None:
        cache = self.pool.cache
        if cache.last_rows is None or cache.last_rows.tolist() != list(rows):
            raise RuntimeStateError(f"commit for rows {rows} does not follow a verify of those rows")
        cache.commit(keep)

    def mtp(self, hidden, next_ids, rows, *, logits=True):
        with self._threads(next_ids.numel()):
            lg, g = self.model.mtp_step(hidden, next_ids, self.pool.mtp_cache, rows=self._rows(rows))
        return g, lg if logits else None


register(TorchBackend, auto=True)
