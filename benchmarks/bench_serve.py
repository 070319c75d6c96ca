"""`make bench-serve`: Triton serving (real tritonserver, gRPC streaming) vs the in-process runtime.

Builds the default engine into build/engine when it is missing, then runs `triton_repo.bench.compare` at
concurrency 1 and 8 and writes build/bench_serve.json. Target: serving overhead <= 15 % tokens/s at
concurrency 8. Run: `.venv/bin/python -m benchmarks.bench_serve [--engine DIR] [--protocol grpc|http]`.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

TARGET_OVERHEAD = 0.15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", type=Path, default=Path("build/engine"))
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("build/bench_serve.json"))
    args = ap.parse_args()

    if not (args.engine / "build.json").is_file():
        from builder.defaults import DEFAULT_MTP, DEFAULT_RECIPE, DEFAULT_TARGET, default_model_dir
        from builder.pipeline import build_engine

        print(f"building the default engine into {args.engine} ...")
        build_engine(default_model_dir(), args.engine, target=DEFAULT_TARGET, recipe=DEFAULT_RECIPE, mtp=DEFAULT_MTP)

    from triton_repo.bench import BenchConfig, compare

    result = compare(args.engine, BenchConfig(concurrencies=(1, 8), requests_per_client=args.requests_per_client,
                                              max_tokens=args.max_tokens, protocol=args.protocol))
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    o8 = result["overhead"].get("8", {})
    verdicts = {k: (None if o8.get(k) is None else ("PASS" if o8[k] <= TARGET_OVERHEAD else "OVER TARGET"))
                for k in ("tokens_per_s", "cpu_per_token")}
    result["target"] = {"max_overhead_at_c8": TARGET_OVERHEAD, "verdict": verdicts}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    def pct(v):
        return "n/a" if v is None else f"{v * 100:+.1f} %"

    print(f"concurrency 8 (target <= {TARGET_OVERHEAD * 100:.0f} %): tokens/s overhead {pct(o8.get('tokens_per_s'))} "
          f"[{verdicts['tokens_per_s']}], CPU per token {pct(o8.get('cpu_per_token'))} [{verdicts['cpu_per_token']}]; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
