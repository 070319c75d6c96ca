"""`make bench-prefix`: the prefix cache through a real tritonserver, on an agent-like trace, cache on vs off.

The trace is what agents send: every request starts with the same long system prompt and tool list (~1,500
tokens), followed by the conversation so far and a short, varying user turn; several conversations run side by
side. It is replayed through Triton's gRPC stream at concurrency 1 and 8 against two packaged copies of the same
engine -- the nemotron model with its default prefix cache and with `--prefix-cache-mb 0` -- taking turns (an
idle server uses no CPU). Each replay uses its own system prompt, so no run is warmed by an earlier one.

Reported per run: TTFT p50/p95, generated tokens/s (wall), the prefix-cache hit rate (reused / eligible whole
prompt blocks, from the responses' `kv_cache_*` outputs), and, cache on, the TTFT of a second request sharing
a 1,500-token prefix over the first one's (median of `--pairs` fresh prefixes).

Targets (issue "Prefix caching ..."): second-request TTFT <= 0.25x the first; trace TTFT p50 with the cache
<= 0.35x without. Run: `.venv/bin/python -m benchmarks.bench_prefix [--engine DIR]`; writes
build/bench_prefix.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

TARGET_SECOND_TTFT = 0.25
TARGET_TRACE_TTFT = 0.35
_WORDS = (
    "path",
    "query",
    "limit",
    "offset",
    "user",
    "repo",
    "branch",
    "file",
    "line",
    "pattern",
    "timeout",
    "format",
    "encoding",
    "recursive",
    "depth",
    "filter",
    "sort",
    "order",
    "field",
    "value",
)


def system_prompt(seed: int, n_tools: int = 36) -> str:
    """A system prompt with a tool list in the shape agents send (deterministic per seed)."""
    r = random.Random(seed)
    tools = []
    for i in range(n_tools):
        params = ", ".join(f"{w}: str" for w in r.sample(_WORDS, 4))
        tools.append(
            f'def tool_{seed}_{i}({params}):\n    """Look up {r.choice(_WORDS)} by {r.choice(_WORDS)} '
            f'and return the {r.choice(_WORDS)} list."""\n'
        )
    return (
        f"# session {seed}: you are a coding agent. Call one tool per step.\n"
        + "".join(tools)
        + "# conversation\n"
    )


def user_turn(conv: int, turn: int) -> str:
    r = random.Random(conv * 1000 + turn)
    return f"# user: find the {r.choice(_WORDS)} of {r.choice(_WORDS)} {conv}.{turn}\nresult = tool_"


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def replay(url: str, seed: int, *, concurrency: int, conversations: int, turns: int, max_tokens: int) -> dict:
    """Replay `conversations` conversations of `turns` turns (each turn's prompt = system + history + user turn),
    `concurrency` conversations at a time. -> TTFT percentiles, tokens/s, hit rate."""
    import clients

    system = system_prompt(seed)
    results, lock = [], threading.Lock()
    todo = list(range(conversations))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                conv = todo.pop(0)
            history = ""
            for t in range(turns):
                prompt = system + history + user_turn(conv, t)
                r = clients.generate(
                    prompt, url=url, protocol="grpc", max_tokens=max_tokens, temperature=0.0, ignore_eos=True
                )
                history += user_turn(conv, t) + r.text + "\n"
                with lock:
                    results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ttft = [r.ttft_s for r in results if r.ttft_s is not None]
    reused = sum(r.kv_cache_reused_block or 0 for r in results)
    eligible = reused + sum(r.kv_cache_missed_block or 0 for r in results)
    return {
        "requests": len(results),
        "concurrency": concurrency,
        "wall_s": wall,
        "ttft_p50_s": _pct(ttft, 0.5),
        "ttft_p95_s": _pct(ttft, 0.95),
        "tokens_per_s": sum(r.num_tokens for r in results) / wall,
        "hit_rate": reused / eligible if eligible else None,
    }


def second_request_ratio(url: str, seed: int, pairs: int) -> dict:
    """TTFT of a request sharing a fresh ~1,500-token prefix with the one before it, over that first one's."""
    import clients

    ratios, firsts, seconds = [], [], []
    for i in range(pairs):
        system = system_prompt(seed + i)
        a = clients.generate(
            system + user_turn(0, 0), url=url, protocol="grpc", max_tokens=4, temperature=0.0, ignore_eos=True
        )
        b = clients.generate(
            system + user_turn(1, 0), url=url, protocol="grpc", max_tokens=4, temperature=0.0, ignore_eos=True
        )
        firsts.append(a.ttft_s)
        seconds.append(b.ttft_s)
        ratios.append(b.ttft_s / a.ttft_s)
    return {
        "first_ttft_s": statistics.median(firsts),
        "second_ttft_s": statistics.median(seconds),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, default=Path("build/engine"))
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=3, help="fresh prefixes for the second-request TTFT ratio")
    ap.add_argument("--out", type=Path, default=Path("build/bench_prefix.json"))
    args = ap.parse_args()

    if not (args.engine / "build.json").is_file():
        from builder.defaults import DEFAULT_MTP, DEFAULT_RECIPE, DEFAULT_TARGET, default_model_dir
        from builder.pipeline import build_engine

        print(f"building the default engine into {args.engine} ...")
        build_engine(
            default_model_dir(), args.engine, target=DEFAULT_TARGET, recipe=DEFAULT_RECIPE, mtp=DEFAULT_MTP
        )

    from trtllm_nemotron.runtime.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(args.engine / "checkpoint")
    n_system = len(tok.encode(system_prompt(0)))
    print(
        f"system prompt + tools: {n_system} tokens; {args.conversations} conversations x {args.turns} turns, "
        f"{args.max_tokens} tokens per turn"
    )

    from triton_repo.package import PackageConfig, package
    from triton_repo.server import ServerConfig, TritonServer, free_ports

    out: dict = {
        "engine_dir": str(args.engine),
        "system_tokens": n_system,
        "runs": {},
        "config": vars(args) | {"engine": str(args.engine), "out": str(args.out)},
    }
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as tmp:
        servers = {}
        try:
            for side, mb in (("on", None), ("off", 0.0)):
                repo = package(
                    args.engine,
                    Path(tmp) / f"repo-{side}",
                    PackageConfig(max_batch_size=8, device="cpu", max_seq_len=4096, prefix_cache_mb=mb),
                )
                h, g, m = free_ports(3)
                cfg = ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m)
                servers[side] = (
                    TritonServer(cfg, log_path=Path(tmp) / f"server-{side}.log").start(),
                    cfg.grpc_url,
                )
            seed = 100
            for side in ("on", "off"):  # warm-up (native step build, first-request costs)
                replay(servers[side][1], seed, concurrency=2, conversations=2, turns=1, max_tokens=4)
                seed += 1
            for c in (1, 8):
                for side in ("on", "off"):
                    seed += 1
                    rep = replay(
                        servers[side][1],
                        seed * 10,
                        concurrency=c,
                        conversations=args.conversations,
                        turns=args.turns,
                        max_tokens=args.max_tokens,
                    )
                    out["runs"][f"{side}-c{c}"] = rep
                    hr = "n/a" if rep["hit_rate"] is None else f"{rep['hit_rate']:.0%}"
                    print(
                        f"cache {side:3s} concurrency {c}: TTFT p50 {rep['ttft_p50_s'] * 1e3:7.1f} ms, "
                        f"p95 {rep['ttft_p95_s'] * 1e3:7.1f} ms, {rep['tokens_per_s']:7.1f} tok/s, hit rate {hr}"
                    )
            out["second_request"] = second_request_ratio(servers["on"][1], 5000, args.pairs)
        finally:
            for srv, _ in servers.values():
                srv.stop()
    sr = out["second_request"]
    ratios = {
        f"c{c}": out["runs"][f"on-c{c}"]["ttft_p50_s"] / out["runs"][f"off-c{c}"]["ttft_p50_s"]
        for c in (1, 8)
    }
    out["trace_ttft_p50_ratio"] = ratios
    out["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    verdict_second = "PASS" if sr["ratio"] <= TARGET_SECOND_TTFT else "OVER TARGET"
    verdict_trace = {k: ("PASS" if v <= TARGET_TRACE_TTFT else "OVER TARGET") for k, v in ratios.items()}
    out["target"] = {
        "second_ttft_ratio": TARGET_SECOND_TTFT,
        "trace_ttft_p50_ratio": TARGET_TRACE_TTFT,
        "verdict": {"second": verdict_second, "trace": verdict_trace},
    }
    print(
        f"second request sharing a {n_system}-token prefix: TTFT {sr['second_ttft_s'] * 1e3:.1f} ms vs "
        f"{sr['first_ttft_s'] * 1e3:.1f} ms = {sr['ratio']:.3f}x (target <= {TARGET_SECOND_TTFT}) [{verdict_second}]"
    )
    for k, v in ratios.items():
        print(
            f"agent trace {k}: TTFT p50 cache on / off = {v:.3f}x (target <= {TARGET_TRACE_TTFT}) "
            f"[{verdict_trace[k]}]"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
