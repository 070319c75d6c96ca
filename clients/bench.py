"""Load client: N concurrent streaming clients over M requests; throughput, TTFT and inter-token latency.

Each of `concurrency` worker threads takes the next request from a shared counter and streams it to the end
(a closed-loop load: at most `concurrency` requests in flight, the server's scheduler batches them). Reported:
requests/s and generated tokens/s over the wall time of the whole run, and p50/p90/p99 of TTFT, inter-token
latency (every gap, over all requests) and per-request end-to-end latency. `summarize` is shared with the
in-process baseline in `benchmarks/bench_serve.py`, so both sides are measured the same way.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import asdict, dataclass

from clients.client import ClientResult, generate
from trtllm_nemotron.errors import ClientError


@dataclass(frozen=True)
class LoadReport:
    label: str
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens: int
    tokens_per_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p90_s: float
    itl_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    cpu_s: float | None = None  # CPU seconds the serving side used during the run (when measured)
    # per-request decode rate seen by the client, (tokens - 1) / (e2e - TTFT), median over requests
    decode_tokens_per_s: float | None = None

    @property
    def cpu_ms_per_token(self) -> float | None:
        return None if self.cpu_s is None or not self.tokens else self.cpu_s * 1e3 / self.tokens

    def to_json(self) -> dict:
        return {**asdict(self), "cpu_ms_per_token": self.cpu_ms_per_token}

    def line(self) -> str:
        return (
            f"{self.label:<22} c={self.concurrency:<3} n={self.requests:<4} err={self.errors:<2} "
            f"{self.tokens_per_s:8.1f} tok/s {self.requests_per_s:6.2f} req/s  "
            f"TTFT p50 {self.ttft_p50_s * 1e3:7.1f} ms p99 {self.ttft_p99_s * 1e3:7.1f} ms  "
            f"ITL p50 {self.itl_p50_s * 1e3:6.1f} ms p99 {self.itl_p99_s * 1e3:6.1f} ms"
            + (f"  CPU {self.cpu_ms_per_token:5.2f} ms/tok" if self.cpu_ms_per_token is not None else "")
        )


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(
    label: str, concurrency: int, results: list[ClientResult], errors: int, wall_s: float
) -> LoadReport:
    """One report from per-request results (TTFT, ITL gaps, e2e) and the run's wall time."""
    ttft = [r.ttft_s for r in results if r.ttft_s is not None]
    itl = [g for r in results for g in r.itl_s]
    e2e = [r.e2e_s for r in results]
    tokens = sum(r.num_tokens for r in results)
    decode = [
        (r.num_tokens - 1) / (r.e2e_s - r.ttft_s)
        for r in results
        if r.ttft_s is not None and r.num_tokens > 1 and r.e2e_s > r.ttft_s
    ]
    return LoadReport(
        label=label,
        concurrency=concurrency,
        requests=len(results),
        errors=errors,
        wall_s=wall_s,
        requests_per_s=len(results) / wall_s if wall_s > 0 else 0.0,
        tokens=tokens,
        tokens_per_s=tokens / wall_s if wall_s > 0 else 0.0,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99),
        itl_p50_s=percentile(itl, 50),
        itl_p90_s=percentile(itl, 90),
        itl_p99_s=percentile(itl, 99),
        e2e_p50_s=percentile(e2e, 50),
        e2e_p99_s=percentile(e2e, 99),
        decode_tokens_per_s=percentile(decode, 50) if decode else None,
    )


def run_load(
    prompts: list[str],
    *,
    url: str,
    protocol: str = "grpc",
    concurrency: int = 8,
    requests: int = 32,
    max_tokens: int = 64,
    temperature: float = 0.0,
    ignore_eos: bool = True,
    model: str = "nemotron",
    timeout: float = 300.0,
    label: str | None = None,
    progress: bool = True,
) -> LoadReport:
    """`requests` streaming requests (prompts cycled) from `concurrency` clients; see the module docstring."""
    from tqdm import tqdm

    if concurrency < 1 or requests < 1 or not prompts:
        raise ClientError(
            f"need concurrency >= 1, requests >= 1 and prompts; got {concurrency}, {requests}, {len(prompts)}"
        )
    lock = threading.Lock()
    next_idx = [0]
    results: list[ClientResult] = []
    errors: list[str] = []
    bar = tqdm(
        total=requests,
        desc=label or f"{protocol} c={concurrency}",
        unit="req",
        file=sys.stderr,
        disable=not progress,
    )

    unreachable: list[ClientError] = []

    def worker() -> None:
        while not unreachable:
            with lock:
                i = next_idx[0]
                if i >= requests:
                    return
                next_idx[0] += 1
            try:
                r = generate(
                    prompts[i % len(prompts)],
                    url=url,
                    protocol=protocol,
                    stream=True,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    model=model,
                    timeout=timeout,
                    ignore_eos=ignore_eos,
                )
                with lock:
                    results.append(r)
            except ClientError as e:
                with lock:
                    errors.append(str(e))
                if "cannot reach" in str(e):  # the server is gone: stop every worker
                    unreachable.append(e)
            bar.update(1)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    bar.close()
    if unreachable:
        raise unreachable[0]
    if not results and errors:
        raise ClientError(f"every request failed; first error: {errors[0]}")
    return summarize(label or f"triton {protocol}", concurrency, results, len(errors), wall)
