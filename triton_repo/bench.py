"""Serving against the engine's own speed: every path a user runs, on one engine dir, in one run.

Paths (all greedy, fixed length via `ignore_eos`, the same prompts):
- `Engine.generate` (batch 1, in-process) and `Engine.generate_batch` of `max_batch_size` prompts (tokens /
  wall, prefill included): the engine's own speed, the reference of every ratio;
- the CLI, `trtllm-nemotron generate --model ENGINE --json` in a subprocess (its decode tok/s);
- the continuous-batching scheduler in-process (`engine.scheduler()`, a thread per client timing the events);
- Triton (real tritonserver, the `nemotron` Python-backend model) over gRPC and HTTP streaming.
The scheduler and Triton run closed loops of `concurrency` clients (1, 8, 32 by default; more clients than
engine slots queue in the scheduler), summarized by `clients.bench.summarize`: tokens/s over the run's wall
time, TTFT / inter-token latency / end-to-end percentiles, and the decode rate one client sees, (tokens - 1) /
(e2e - TTFT). Every path runs once per round and the rounds are interleaved (the machine is shared: a slow
spell slows every path of a round alike); ratios are per round, then the median over rounds.

Ratios: batch-1 paths (CLI, one stream) by decode tok/s against `Engine.generate`; concurrent paths by tokens /
wall against `generate_batch` of `max_batch_size`. Serving CPU time per token is measured too (Triton: the
server's process group; in-process: this process).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
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
    concurrencies: tuple[int, ...] = (1, 8, 32)
    requests_per_client: int = 1
    requests: int | None = None  # requests per run at each concurrency (None: requests_per_client each)
    max_tokens: int = 128  # tokens per request of the concurrent runs
    single_tokens: int = 384  # tokens of the batch-1 runs (generate, CLI, one stream): start-up amortised
    protocols: tuple[str, ...] = ("grpc", "http")
    max_batch_size: int = 8
    rounds: int = 3
    mtp: int | None = None  # None: the engine's setting
    stream_interval: int = 1  # the server's (TensorRT-LLM's option)
    cli: bool = True


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


def _params(max_tokens: int):
    from trtllm_nemotron.runtime import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def _inprocess_load(engine, concurrency: int, requests: int, max_tokens: int) -> LoadReport:
    """The scheduler path: `concurrency` client threads, each submitting and timing its events."""
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
            r = ClientResult(protocol="in-process")
            t0 = time.perf_counter()
            t_last = None
            for ev in sched.submit(PROMPTS[i % len(PROMPTS)], _params(max_tokens)):
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
    return replace(summarize("scheduler in-process", concurrency, results, 0, wall), cpu_s=cpu)


def _engine_runs(engine, cfg: BenchConfig) -> dict:
    """Engine.generate (decode tok/s, TTFT) and generate_batch of max_batch_size (tokens / wall)."""
    c = engine.generate(PROMPTS[0], _params(cfg.single_tokens))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(cfg.max_batch_size)]
    t0 = time.perf_counter()
    cs = engine.generate_batch(prompts, _params(cfg.max_tokens))
    wall = time.perf_counter() - t0
    return {
        "generate": {
            "decode_tokens_per_s": c.stats["tokens_per_s"],
            "ttft_s": c.stats["ttft_s"],
            "tokens": c.stats["num_tokens"],
            "acceptance_length": c.stats["acceptance_length"],
        },
        "generate_batch": {
            "batch": len(prompts),
            "tokens": sum(len(x.token_ids) for x in cs),
            "wall_s": wall,
            "tokens_per_s": sum(len(x.token_ids) for x in cs) / wall,
        },
    }


def _cli_run(engine_dir: Path, cfg: BenchConfig) -> dict:
    """`trtllm-nemotron generate --model ENGINE --json` in a fresh process; its JSON (decode tok/s, TTFT)."""
    cmd = [
        sys.executable,
        "-m",
        "trtllm_nemotron",
        "generate",
        "--model",
        str(engine_dir),
        "--json",
        "--max-tokens",
        str(cfg.single_tokens),
        "--ignore-eos",
        PROMPTS[0],
    ]
    if cfg.mtp is not None:
        cmd[-1:-1] = ["--mtp", str(cfg.mtp)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    return {
        "decode_tokens_per_s": res["tokens_per_s"],
        "ttft_s": res["ttft_s"],
        "tokens": res["num_tokens"],
        "process_wall_s": time.perf_counter() - t0,
    }


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def compare(engine_dir: Path | str, cfg: BenchConfig | None = None, *, echo=print) -> dict:
    """Run every path, `cfg.rounds` interleaved rounds; returns {"rounds": [...], "ratios": {...}, "summary"}.

    The server and the in-process engine are both up for the whole run but take turns (an idle server uses no
    CPU); a warm-up of every path precedes the measured rounds.
    """
    from triton_repo.package import PackageConfig, package
    from triton_repo.server import ServerConfig, TritonServer, free_ports
    from trtllm_nemotron.runtime import Engine

    cfg = cfg or BenchConfig()
    engine_dir = Path(engine_dir)
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        repo = package(
            engine_dir,
            Path(tmp) / "repo",
            PackageConfig(
                max_batch_size=cfg.max_batch_size,
                device="cpu",
                mtp=cfg.mtp,
                stream_interval=cfg.stream_interval,
            ),
        )
        h, g, m = free_ports(3)
        scfg = ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m)
        urls = {"grpc": scfg.grpc_url, "http": scfg.http_url}
        with TritonServer(scfg, log_path=Path(tmp) / "server.log") as server:
            assert server.proc is not None  # started by __enter__
            pid = server.proc.pid
            engine = Engine.load(engine_dir, device="cpu", max_batch_size=cfg.max_batch_size, mtp=cfg.mtp)

            def triton(proto: str, c: int, n: int, tokens: int) -> LoadReport:
                cpu0 = group_cpu_s(pid)
                rep = run_load(
                    list(PROMPTS),
                    url=urls[proto],
                    protocol=proto,
                    concurrency=c,
                    requests=n,
                    max_tokens=tokens,
                    label=f"triton {proto}",
                    progress=False,
                )
                return replace(rep, cpu_s=group_cpu_s(pid) - cpu0)

            def one_round() -> dict:
                r: dict = _engine_runs(engine, cfg)
                if cfg.cli:
                    r["cli"] = _cli_run(engine_dir, cfg)
                for c in cfg.concurrencies:
                    tokens = cfg.single_tokens if c == 1 else cfg.max_tokens
                    n = cfg.requests or c * cfg.requests_per_client
                    r[f"scheduler c{c}"] = _inprocess_load(engine, c, n, tokens).to_json()
                    for proto in cfg.protocols:
                        r[f"{proto} c{c}"] = triton(proto, c, n, tokens).to_json()
                return r

            echo("warm-up (every path once) ...")
            one_round()
            for i in range(cfg.rounds):
                r = one_round()
                rounds.append(r)
                echo(
                    f"round {i + 1}/{cfg.rounds}: generate {r['generate']['decode_tokens_per_s']:.0f} tok/s, "
                    f"generate_batch({cfg.max_batch_size}) {r['generate_batch']['tokens_per_s']:.0f} tok/s"
                    + (f", CLI {r['cli']['decode_tokens_per_s']:.0f}" if "cli" in r else "")
                    + "".join(f", {k} {v['tokens_per_s']:.0f}" for k, v in r.items() if " c" in k)
                )
    return summarize_rounds(rounds, cfg, echo=echo)


def summarize_rounds(rounds: list[dict], cfg: BenchConfig, *, echo=print) -> dict:
    """Per-path medians over the rounds and the ratios to the engine (per round, then the median)."""
    ratios: dict[str, float | None] = {}
    ranges: dict[str, list[float]] = {}

    def ratio(name: str, num, den) -> None:
        per_round = [num(r) / den(r) for r in rounds if num(r) and den(r)]
        ratios[name] = _median(per_round)
        ranges[name] = [min(per_round), max(per_round)] if per_round else []

    gen = lambda r: r["generate"]["decode_tokens_per_s"]  # noqa: E731
    gb = lambda r: r["generate_batch"]["tokens_per_s"]  # noqa: E731
    if cfg.cli:
        ratio("cli / generate (decode tok/s)", lambda r: r["cli"]["decode_tokens_per_s"], gen)
    paths = ["scheduler", *cfg.protocols]
    for c in cfg.concurrencies:
        for p in paths:
            key = f"{p} c{c}"
            if c == 1:
                ratio(
                    f"{key} / generate (decode tok/s of the stream)",
                    lambda r, k=key: r[k]["decode_tokens_per_s"],
                    gen,
                )
            else:
                ratio(
                    f"{key} / generate_batch({cfg.max_batch_size}) (tokens/wall)",
                    lambda r, k=key: r[k]["tokens_per_s"],
                    gb,
                )
    med = {}
    for k in rounds[0]:
        if " c" in k:
            med[k] = {
                f: _median([r[k][f] for r in rounds])
                for f in (
                    "tokens_per_s",
                    "decode_tokens_per_s",
                    "ttft_p50_s",
                    "ttft_p90_s",
                    "ttft_p99_s",
                    "itl_p50_s",
                    "itl_p90_s",
                    "itl_p99_s",
                    "e2e_p50_s",
                    "cpu_ms_per_token",
                )
            }
            med[k]["errors"] = sum(r[k]["errors"] for r in rounds)
    engine_med = {
        "generate decode tok/s": _median([gen(r) for r in rounds]),
        f"generate_batch({cfg.max_batch_size}) tok/s": _median([gb(r) for r in rounds]),
    }
    if cfg.cli:
        engine_med["cli decode tok/s"] = _median([r["cli"]["decode_tokens_per_s"] for r in rounds])
    echo(render(engine_med, med, ratios, ranges, len(rounds)))
    return {
        "config": {**asdict(cfg)},
        "rounds": rounds,
        "engine": engine_med,
        "paths": med,
        "ratios": ratios,
        "ratio_ranges": ranges,
    }


def render(engine_med: dict, med: dict, ratios: dict, ranges: dict, n_rounds: int) -> str:
    def ms(v):
        return "-" if v is None else f"{v * 1e3:.1f}"

    lines = [f"medians over {n_rounds} interleaved rounds", ""]
    lines += [f"{k}: {v:.1f}" for k, v in engine_med.items() if v is not None]
    lines += [
        "",
        "| path | tok/s | decode tok/s (one stream) | TTFT p50 / p90 / p99 ms | ITL p50 / p90 / p99 ms "
        "| CPU ms/token | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in med.items():
        dec = "-" if v["decode_tokens_per_s"] is None else f"{v['decode_tokens_per_s']:.1f}"
        cpu = "-" if v["cpu_ms_per_token"] is None else f"{v['cpu_ms_per_token']:.2f}"
        lines.append(
            f"| {k} | {v['tokens_per_s']:.1f} | {dec} | {ms(v['ttft_p50_s'])} / {ms(v['ttft_p90_s'])} / "
            f"{ms(v['ttft_p99_s'])} | {ms(v['itl_p50_s'])} / {ms(v['itl_p90_s'])} / {ms(v['itl_p99_s'])} "
            f"| {cpu} | {v['errors']} |"
        )
    lines += ["", "ratios (median of per-round ratios [lowest, highest round]):"]
    for k, v in ratios.items():
        rng = ranges.get(k) or []
        span = f" [{rng[0]:.2f}, {rng[1]:.2f}]" if rng else ""
        lines.append(f"  {k}: {'n/a' if v is None else f'{v:.2f}x'}{span}")
    return "\n".join(lines)
