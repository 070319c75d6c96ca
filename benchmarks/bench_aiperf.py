"""`make bench-serve` (second part): the OpenAI front under load -- its overhead vs direct gRPC, and AIPerf.

One tritonserver on the engine (default: build/engine, built when missing) with the OpenAI front beside it, as
`serve REPO --openai-port` runs them. Then:

1. Front overhead at concurrency 8: the same closed-loop load (fixed-length streaming completions, greedy,
   `ignore_eos`) straight to Triton over gRPC (`clients.bench.run_load`) and through the front (SSE read with
   `http.client`), in interleaved rounds (direct, front, direct, front, ...) so both see the same machine;
   tokens/s = generated tokens / wall time of the run. overhead = 1 - median over rounds of (front / direct).
   Target <= 15 %. The serving side's CPU per token (tritonserver's process group, plus the front's process
   on the front runs) is reported too: steadier than wall time when other work shares the cores.
2. AIPerf 0.13.0 (`aiperf profile --endpoint-type chat --streaming`, synthetic prompts from our tokenizer,
   `--use-server-token-count` so token counts are the engine's own `usage`) at concurrency 1, 8 and 32; every
   run must finish with zero failed requests.

Why not AIPerf straight at Triton: AIPerf 0.13 speaks HTTP only, and against Triton's `generate_stream` with
`--endpoint-type template` it treats every event's `text_output` as a delta, while the llmapi protocol (ours and
TensorRT-LLM's) streams the cumulative text: it completes but reports output lengths off by ~900 %. Through
the front, text is proper OpenAI deltas. (perf_analyzer / GenAI-Perf wheels need glibc >= 2.38.)

Writes build/bench_aiperf.json. Run: `.venv/bin/python -m benchmarks.bench_aiperf [--engine DIR]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TARGET_OVERHEAD = 0.15
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


def front_load(base_url: str, *, concurrency: int, requests: int, max_tokens: int) -> dict:
    """`requests` streaming completions through the front from `concurrency` threads (prompts cycled).

    The client reads the SSE stream with `http.client` and decodes every event, as `clients.bench.run_load`
    does with Triton's responses on the direct side, so both sides pay a similar client cost (the `openai`
    SDK's per-chunk pydantic models would be charged to the front on this 2-core host).
    """
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(base_url)
    lock = threading.Lock()
    state = {"next": 0, "tokens": 0, "errors": 0}

    def one(prompt: str) -> int:
        body = json.dumps(
            {
                "model": "nemotron",
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
        )
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        try:
            conn.request(
                "POST", f"{u.path}/completions", body=body, headers={"Content-Type": "application/json"}
            )
            r = conn.getresponse()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
            n = 0
            for raw in r:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if event.get("usage"):
                    n = event["usage"]["completion_tokens"]
            return n
        finally:
            conn.close()

    def worker() -> None:
        while True:
            with lock:
                i = state["next"]
                if i >= requests:
                    return
                state["next"] += 1
            try:
                n = one(PROMPTS[i % len(PROMPTS)])
                with lock:
                    state["tokens"] += n
            except (OSError, RuntimeError, ValueError):
                with lock:
                    state["errors"] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "tokens": state["tokens"],
        "errors": state["errors"],
        "wall_s": wall,
        "tokens_per_s": state["tokens"] / wall if wall > 0 else 0.0,
    }


def overhead_rounds(
    grpc_url: str,
    openai_url: str,
    *,
    server_pgid: int,
    front_pgid: int,
    rounds: int,
    concurrency: int,
    requests: int,
    max_tokens: int,
) -> dict:
    """Interleaved direct / front runs; tokens/s ratio per round, and the serving side's CPU per token
    (Triton's process group; plus the front's process for the front runs), which other load on a shared
    machine disturbs much less than wall-clock throughput."""
    from clients.bench import run_load
    from triton_repo.bench import group_cpu_s

    pairs = []
    for r in range(rounds):
        cpu0 = group_cpu_s(server_pgid)
        direct = run_load(
            list(PROMPTS),
            url=grpc_url,
            protocol="grpc",
            concurrency=concurrency,
            requests=requests,
            max_tokens=max_tokens,
            label="direct gRPC",
            progress=False,
        )
        cpu1, fcpu1 = group_cpu_s(server_pgid), group_cpu_s(front_pgid)
        front = front_load(openai_url, concurrency=concurrency, requests=requests, max_tokens=max_tokens)
        cpu2, fcpu2 = group_cpu_s(server_pgid), group_cpu_s(front_pgid)
        if direct.errors or front["errors"]:
            raise RuntimeError(
                f"round {r}: failed requests (direct {direct.errors}, front {front['errors']})"
            )
        p = {
            "direct_tokens_per_s": direct.tokens_per_s,
            "front_tokens_per_s": front["tokens_per_s"],
            "ratio": front["tokens_per_s"] / direct.tokens_per_s,
            "direct_cpu_ms_per_token": 1e3 * (cpu1 - cpu0) / max(1, direct.tokens),
            "front_cpu_ms_per_token": 1e3 * (cpu2 - cpu1 + fcpu2 - fcpu1) / max(1, front["tokens"]),
            "front_process_cpu_ms_per_token": 1e3 * (fcpu2 - fcpu1) / max(1, front["tokens"]),
        }
        pairs.append(p)
        print(
            f"  round {r + 1}/{rounds}: direct gRPC {direct.tokens_per_s:7.1f} tok/s "
            f"({p['direct_cpu_ms_per_token']:.2f} CPU ms/token), OpenAI front {front['tokens_per_s']:7.1f} tok/s "
            f"({p['front_cpu_ms_per_token']:.2f} CPU ms/token, {p['front_process_cpu_ms_per_token']:.2f} of them "
            f"in the front), ratio {p['ratio']:.3f}",
            flush=True,
        )
    ratio = statistics.median(p["ratio"] for p in pairs)
    cpu_ratio = statistics.median(p["front_cpu_ms_per_token"] / p["direct_cpu_ms_per_token"] for p in pairs)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "max_tokens": max_tokens,
        "rounds": pairs,
        "median_ratio": ratio,
        "overhead": 1.0 - ratio,
        "cpu_per_token_overhead": cpu_ratio - 1.0,
    }


def run_aiperf(
    aiperf: str,
    openai_root: str,
    tokenizer: Path,
    out: Path,
    *,
    concurrency: int,
    requests: int,
    isl: int,
    osl: int,
) -> dict:
    cmd = [
        aiperf,
        "profile",
        "-m",
        "nemotron",
        "--url",
        openai_root,
        "--endpoint-type",
        "chat",
        "--streaming",
        "--tokenizer",
        str(tokenizer),
        "--isl",
        str(isl),
        "--osl",
        str(osl),
        "--concurrency",
        str(concurrency),
        "--request-count",
        str(requests),
        "--warmup-request-count",
        str(min(concurrency, 8)),
        "--extra-inputs",
        "ignore_eos:true",
        "--use-server-token-count",
        "--output-artifact-dir",
        str(out),
        "--ui-type",
        "none",
        "--no-server-metrics",
        "--no-gpu-telemetry",
        "--no-auto-plot",
        "--random-seed",
        "0",
    ]
    print(f"  {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    (out / "aiperf.stdout.txt").write_text(proc.stdout + proc.stderr)
    export = out / "profile_export_aiperf.json"
    if proc.returncode != 0 or not export.is_file():
        raise RuntimeError(f"aiperf failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    d = json.loads(export.read_text())

    def avg(key: str, stat: str = "avg"):
        v = d.get(key)
        return v.get(stat) if isinstance(v, dict) else None

    errors = d.get("error_summary") or []
    n_errors = sum(e.get("count", 1) for e in errors) if isinstance(errors, list) else int(bool(errors))
    return {
        "concurrency": concurrency,
        "requests": int(avg("request_count") or 0),
        "failed_requests": n_errors,
        "request_throughput_per_s": avg("request_throughput"),
        "output_token_throughput_per_s": avg("output_token_throughput"),
        "ttft_p50_ms": avg("time_to_first_token", "p50"),
        "itl_p50_ms": avg("inter_token_latency", "p50"),
        "osl_avg": avg("output_sequence_length"),
        "isl_avg": avg("input_sequence_length"),
        "command": " ".join(cmd),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, default=Path("build/engine"))
    ap.add_argument("--max-tokens", type=int, default=48, help="output tokens per request (overhead rounds)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved direct/front rounds")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--concurrencies", default="1,8,32", help="AIPerf concurrencies")
    ap.add_argument("--isl", type=int, default=64, help="AIPerf synthetic prompt tokens")
    ap.add_argument("--osl", type=int, default=48, help="AIPerf output tokens")
    ap.add_argument("--out", type=Path, default=Path("build/bench_aiperf.json"))
    args = ap.parse_args()

    aiperf = shutil.which("aiperf") or str(Path(sys.executable).parent / "aiperf")
    if not Path(aiperf).is_file():
        sys.exit("aiperf is not installed: `pip install -e '.[bench]'` (make bench-serve does it)")
    if not (args.engine / "build.json").is_file():
        from builder.defaults import DEFAULT_MTP, DEFAULT_RECIPE, DEFAULT_TARGET, default_model_dir
        from builder.pipeline import build_engine

        print(f"building the default engine into {args.engine} ...")
        build_engine(
            default_model_dir(), args.engine, target=DEFAULT_TARGET, recipe=DEFAULT_RECIPE, mtp=DEFAULT_MTP
        )

    from triton_repo.openai_front.launch import OpenAIFront
    from triton_repo.package import PackageConfig, package
    from triton_repo.server import ServerConfig, TritonServer, free_ports

    result: dict = {
        "engine_dir": str(args.engine),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory(prefix="bench-aiperf-") as tmp:
        tmp_p = Path(tmp)
        repo = package(args.engine, tmp_p / "repo", PackageConfig(max_batch_size=8, device="cpu"))
        h, g, m, o = free_ports(4)
        scfg = ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m)
        with (
            TritonServer(scfg, log_path=tmp_p / "server.log") as server,
            OpenAIFront(
                grpc_url=scfg.grpc_url, engine_dir=args.engine, port=o, log_path=tmp_p / "front.log"
            ) as front,
        ):
            base = f"{front.url}/v1"
            front_load(base, concurrency=8, requests=8, max_tokens=args.max_tokens)  # warm-up
            print(
                f"OpenAI front vs direct gRPC, concurrency 8 ({args.rounds} interleaved rounds):", flush=True
            )
            result["front_overhead"] = overhead_rounds(
                scfg.grpc_url,
                base,
                server_pgid=server.proc.pid,
                front_pgid=front.proc.pid,
                rounds=args.rounds,
                concurrency=8,
                requests=8 * args.requests_per_client,
                max_tokens=args.max_tokens,
            )
            result["aiperf"] = []
            for c in (int(x) for x in args.concurrencies.split(",")):
                print(f"AIPerf, concurrency {c}:", flush=True)
                out = tmp_p / f"aiperf-c{c}"
                out.mkdir()
                run = run_aiperf(
                    aiperf,
                    front.url,
                    args.engine / "checkpoint",
                    out,
                    concurrency=c,
                    requests=max(16, 4 * c),
                    isl=args.isl,
                    osl=args.osl,
                )
                result["aiperf"].append(run)
                print(
                    f"  {run['requests']} requests, {run['failed_requests']} failed: "
                    f"{run['output_token_throughput_per_s']:.1f} output tok/s, "
                    f"{run['request_throughput_per_s']:.2f} req/s, TTFT p50 {run['ttft_p50_ms']:.1f} ms, "
                    f"ITL p50 {run['itl_p50_ms']:.2f} ms",
                    flush=True,
                )

    ov = result["front_overhead"]["overhead"]
    failed = sum(r["failed_requests"] for r in result["aiperf"])
    result["target"] = {
        "max_front_overhead_at_c8": TARGET_OVERHEAD,
        "verdict": "PASS" if ov <= TARGET_OVERHEAD and failed == 0 else "FAIL",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    cpu = result["front_overhead"]["cpu_per_token_overhead"]
    print(
        f"OpenAI front overhead at concurrency 8: {ov * 100:+.1f} % tokens/s (target <= "
        f"{TARGET_OVERHEAD * 100:.0f} %), serving CPU per token {cpu * 100:+.1f} %; AIPerf failed requests: {failed} [{result['target']['verdict']}]; "
        f"wrote {args.out}"
    )
    if result["target"]["verdict"] != "PASS":
        sys.exit(1)


if __name__ == "__main__":
    main()
