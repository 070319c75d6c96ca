"""Sampling options and the token sampler.

`SamplingParams` is the per-request contract shared with the serving engineer (the Triton model maps its
`sampling_param_*` inputs onto it). `validate()` is the single place that refuses impossible options.

Sampling runs outside the compiled forward, row by row, each request with its own `torch.Generator`:
- temperature 0 is greedy (argmax; ties break to the lowest id, as torch.argmax);
- otherwise logits / temperature, then top-k (0 = off), then top-p (nucleus, 1 = off; the most likely token
  always survives), then one multinomial draw from the request's generator.
A request's random stream therefore depends only on its seed and its own logits, never on which other
requests share the batch, so seeded sampling is reproducible alone or batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trtllm_nemotron.errors import RuntimeStateError

MAX_TEMPERATURE = 100.0


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None  # None = a fresh random seed per request
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings (not included in the output)
    ignore_eos: bool = False

    def validate(self) -> SamplingParams:
        """Raise RuntimeStateError naming the first impossible option; returns self for chaining."""
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop or ())
        checks = [
            (
                isinstance(self.max_tokens, int)
                and not isinstance(self.max_tokens, bool)
                and self.max_tokens >= 1,
                f"max_tokens must be an integer >= 1, got {self.max_tokens!r}",
            ),
            (
                _is_number(self.temperature) and 0.0 <= self.temperature <= MAX_TEMPERATURE,
                f"temperature must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {self.temperature!r}",
            ),
            (
                isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0,
                f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}",
            ),
            (
                _is_number(self.top_p) and 0.0 < self.top_p <= 1.0,
                f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}",
            ),
            (
                self.seed is None
                or (
                    isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63
                ),
                f"seed must be None or an integer in [0, 2**63), got {self.seed!r}",
            ),
            (
                all(isinstance(s, str) and s for s in self.stop),
                f"stop must be a list of non-empty strings, got {list(self.stop)!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise RuntimeStateError(f"invalid sampling option: {msg}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def make_generator(self) -> torch.Generator:
        g = torch.Generator()
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # excludes NaN


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [..., V] -> fp32 logits with temperature applied and filtered tokens at -inf."""
    x = logits.float() / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly before each token
        drop = before > top_p
        drop[..., 0] = False
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.empty_like(x).scatter_(-1, order, sorted_x)
    return x


def sample_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> list[int]:
    """logits [n, V] (n consecutive positions of one request) -> n token ids, drawn in order."""
    if params.greedy:
        return logits.argmax(dim=-1).tolist()
    x = filter_logits(logits, params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(x, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).view(-1).tolist()
