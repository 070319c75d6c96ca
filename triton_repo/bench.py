"""Serving overhead: the Triton path against the in-process runtime, same engine, same load, same clock.

Both sides run the same closed loop (`concurrency` workers, `requests` streaming requests, fixed length via
`ignore_eos`) and are summarized by `clients.bench.summarize`, so tokens/s, TTFT and inter-token latency are
measured identically: in-process, a worker submits to `engine.scheduler()` and times the `StreamEvent`s;
through Triton, a worker streams over gRPC (or HTTP SSE) and times the responses. The two sides take turns
(they share the CPU cores) and each side's best of `repeats` runs is reported.

overhead = 1 - triton tokens/s / in-process tokens/s (target: <= 15 % at concurrency 8).

Wall-clock throughput on a shared machine is noisy, so the serving side's CPU time per generated token is
measured too: in-process, this process's CPU time during the run (engine + consumer threads); through Triton,
the CPU time of the server's process group (tritonserver + the model's stub) during the run, the client
excluded (it runs elsewhere in a deployment). On a CPU-bound host the two overheads coincide; the CPU one is
what stays stable when other work shares the cores.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from clients.bench import LoadReport, run_load, summarize
from clients.client import ClientResult

PROMPTS = (
    "def fibonacci(n):",
    "The capital of France is",
    "import numpy as np\n\ndef softmax(x):",
    "Once upon a time, in a small village,",
    "class Stack:\n    def __init__(self):",
    "SELECT name, count(*) FROM users",
    "Mamba is a state space model that",
    "for i in range(10):",
)


@dataclass(frozen=True)
class BenchConfig:
    concurrencies: tuple[int, ...] = (1, 8)
    requests_per_client: int = 4
    max_tokens: int = 48
    protocol: str = "grpc"
    max_batch_size: int = 8
    repeats: int = 3


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group `pgid` (Linux /proc)."""
    ticks = 0
    for p in Path("/proc").glob("[0-9]*"):
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ... utime(11) stime(12)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _inprocess_load(engine, concurrency: int, requests: int, max_tokens: int) -> LoadReport:
    from trtllm_nemotron.runtime import SamplingParams

    sched = engine.scheduler()
    lock = threading.Lock()
    nxt = [0]
    results: list[ClientResult] = []

    def worker() -> None:
        while True:
            with lock:
                i = nxt[0]
                if i >= requests:
                    return
                nxt[0] += 1
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            r = ClientResult(protocol="in-process")
            t0 = time.perf_counter()
            t_last = None
            for ev in sched.submit(PROMPTS[i % len(PROMPTS)], params):
                n = len(ev.token_ids)
                if n:
                    now = time.perf_counter()
                    if t_last is None:
                        r.ttft_s = now - t0
                    else:
                        r.itl_s += [(now - t_last) / n] * n
                    t_last = now
                    r.num_tokens += n
                r.text += ev.text
                if ev.finish_reason is not None:
                    r.finish_reason = ev.finish_reason
            r.e2e_s = time.perf_counter() - t0
            with lock:
                results.append(r)

    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        sched.shutdown()
    return replace(summarize("in-process runtime", concurrency, results, 0, wall), cpu_s=cpu)


def compare(engine_dir: Path | str, cfg: BenchConfig | None = None, *, echo=print) -> dict:
    """Run both sides at each concurrency; returns {"reports": [...], "overhead": {c: {...}}, ...}.

    The server and the in-process engine are both up for the whole run but take turns (an idle server uses no
    CPU): per concurrency, an in-process run then a Triton run, `repeats` times; each side's best run counts
    (the machine is shared, so the best run is the least disturbed one). A warm-up at the highest concurrency
    precedes the measured runs on both sides.
    """
    from triton_repo.package import PackageConfig, package
    from triton_repo.server import ServerConfig, TritonServer, free_ports
    from trtllm_nemotron.runtime import Engine

    cfg = cfg or BenchConfig()
    engine_dir = Path(engine_dir)
    best: dict[tuple[str, int], LoadReport] = {}

    def keep(rep: LoadReport, side: str, c: int) -> None:
        old = best.get((side, c))
        if old is None or rep.tokens_per_s > old.tokens_per_s:
            best[(side, c)] = rep

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        repo = package(engine_dir, Path(tmp) / "repo", PackageConfig(max_batch_size=cfg.max_batch_size, device="cpu"))
        h, g, m = free_ports(3)
        scfg = ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m)
        url = scfg.grpc_url if cfg.protocol == "grpc" else scfg.http_url
        with TritonServer(scfg, log_path=Path(tmp) / "server.log") as server:
            assert server.proc is not None  # started by __enter__
            pid = server.proc.pid
            engine = Engine.load(engine_dir, device="cpu", max_batch_size=cfg.max_batch_size)
            cmax = max(cfg.concurrencies)
            _inprocess_load(engine, cmax, cmax, cfg.max_tokens)  # warm-up
            run_load(list(PROMPTS), url=url, protocol=cfg.protocol, concurrency=cmax, requests=cmax,
                     max_tokens=cfg.max_tokens, progress=False)  # warm-up
            for _ in range(cfg.repeats):
                for c in cfg.concurrencies:
                    n = c * cfg.requests_per_client
                    keep(_inprocess_load(engine, c, n, cfg.max_tokens), "in-process", c)
                    cpu0 = group_cpu_s(pid)
                    rep = run_load(list(PROMPTS), url=url, protocol=cfg.protocol, concurrency=c, requests=n,
                                   max_tokens=cfg.max_tokens, label=f"triton {cfg.protocol}",
                                   progress=sys.stderr.isatty())
                    keep(replace(rep, cpu_s=group_cpu_s(pid) - cpu0), "triton", c)
            del engine
            gc.collect()

    overhead: dict[int, dict] = {}
    for c in cfg.concurrencies:
        base, rep = best[("in-process", c)], best[("triton", c)]
        echo(base.line())
        echo(rep.line())
        overhead[c] = {
            "tokens_per_s": 1.0 - rep.tokens_per_s / base.tokens_per_s if base.tokens_per_s else None,
            "cpu_per_token": (rep.cpu_ms_per_token / base.cpu_ms_per_token - 1.0
                              if rep.cpu_ms_per_token and base.cpu_ms_per_token else None),
            "ttft_p50_s": rep.ttft_p50_s - base.ttft_p50_s,
            "itl_p50_s": rep.itl_p50_s - base.itl_p50_s,
        }
    for c, o in overhead.items():
        cpu = "n/a" if o["cpu_per_token"] is None else f"{o['cpu_per_token'] * 100:+.1f} %"
        echo(f"concurrency {c}: serving overhead {o['tokens_per_s'] * 100:5.1f} % tokens/s (wall), "
             f"CPU per token {cpu}, TTFT p50 {o['ttft_p50_s'] * 1e3:+.1f} ms, ITL p50 {o['itl_p50_s'] * 1e3:+.1f} ms")
    return {"engine_dir": str(engine_dir), "config": cfg.__dict__,
            "reports": [best[(side, c)].to_json() for c in cfg.concurrencies for side in ("in-process", "triton")],
            "overhead": {str(c): o for c, o in overhead.items()}}
