"""`make bench-serve`: every serving path against the engine's own speed, on one engine dir, in one run.

    python -m benchmarks.bench_serve [--engine DIR] [--rounds 3] [--concurrency 1,8,32] [--protocols grpc,http]
                                     [--max-tokens 128] [--single-tokens 384] [--mtp K] [--stream-interval N]

Builds the default engine into build/engine when it is missing, then runs `triton_repo.bench.compare`:
`Engine.generate` and `Engine.generate_batch` beside the CLI (`trtllm-nemotron generate --model ENGINE
--json`), the in-process scheduler, and Triton over gRPC and HTTP at each concurrency -- tok/s, TTFT and ITL
percentiles, ratios to the engine printed -- in interleaved rounds, and writes build/bench_serve.json.

Targets (issue 16, judged on the medians of the per-round ratios): CLI decode >= 0.9x `Engine.generate`; one
Triton gRPC stream >= 0.75x `Engine.generate`; 8 concurrent gRPC streams >= 0.75x `generate_batch` of 8.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

TARGETS = {
    "cli / generate (decode tok/s)": 0.9,
    "grpc c1 / generate (decode tok/s of the stream)": 0.75,
    "grpc c8 / generate_batch(8) (tokens/wall)": 0.75,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, default=Path("build/engine"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent clients")
    ap.add_argument("--protocols", default="grpc,http")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per request of the concurrent runs")
    ap.add_argument("--single-tokens", type=int, default=384, help="tokens of the batch-1 runs")
    ap.add_argument("--max-batch-size", type=int, default=8, help="engine slots (in-process and the server)")
    ap.add_argument("--mtp", type=int, default=None, help="MTP draft tokens (default: the engine's)")
    ap.add_argument("--stream-interval", type=int, default=1, help="the server's stream_interval")
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI subprocess runs")
    ap.add_argument("--out", type=Path, default=Path("build/bench_serve.json"))
    args = ap.parse_args(argv)

    if not (args.engine / "build.json").is_file():
        from builder.defaults import DEFAULT_MTP, DEFAULT_RECIPE, DEFAULT_TARGET, default_model_dir
        from builder.pipeline import build_engine

        print(f"building the default engine into {args.engine} ...")
        build_engine(
            default_model_dir(), args.engine, target=DEFAULT_TARGET, recipe=DEFAULT_RECIPE, mtp=DEFAULT_MTP
        )

    from triton_repo.bench import BenchConfig, compare

    cfg = BenchConfig(
        concurrencies=tuple(int(c) for c in args.concurrency.split(",")),
        max_tokens=args.max_tokens,
        single_tokens=args.single_tokens,
        protocols=tuple(p for p in args.protocols.split(",") if p),
        max_batch_size=args.max_batch_size,
        rounds=args.rounds,
        mtp=args.mtp,
        stream_interval=args.stream_interval,
        cli=not args.no_cli,
    )
    result = compare(args.engine, cfg)
    result["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    verdicts = {}
    for name, target in TARGETS.items():
        key = name.replace("(8)", f"({cfg.max_batch_size})")
        got = result["ratios"].get(key)
        verdicts[key] = {
            "target": target,
            "measured": got,
            "verdict": None if got is None else ("met" if got >= target else "NOT MET"),
        }
    result["targets"] = verdicts
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in verdicts.items():
        m = "n/a" if v["measured"] is None else f"{v['measured']:.2f}x"
        print(f"target {k} >= {v['target']}x: {m} [{v['verdict']}]")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
