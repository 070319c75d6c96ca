"""What the HTTP guard in front of tritonserver costs: streaming load over HTTP through the guard (the port `serve`
publishes) vs straight to tritonserver's private HTTP port, side by side on one server, rounds interleaved.

    .venv/bin/python benchmarks/bench_http_guard.py [--engine build/engine] [--rounds 3] [--requests 16]

Prints, per concurrency, the median over rounds of tokens/s and TTFT p50 for both paths and their ratio
(guard / direct). Needs an engine dir (`make build-engine`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from clients.bench import run_load
from triton_repo.bench import PROMPTS
from triton_repo.package import PackageConfig, package
from triton_repo.server import ServerConfig, TritonServer, free_ports


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", type=Path, default=Path("build/engine"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16, help="requests per run")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = package(
            args.engine,
            Path(tmp) / "repo",
            PackageConfig(max_batch_size=max(args.concurrency), max_seq_len=256, device="cpu"),
        )
        h, g, m = free_ports(3)
        with TritonServer(
            ServerConfig(repo, http_port=h, grpc_port=g, metrics_port=m), log_path=Path(tmp) / "server.log"
        ) as server:
            urls = {"guard": f"127.0.0.1:{h}", "direct": f"127.0.0.1:{server.upstream_http_port}"}
            run_load(
                list(PROMPTS),
                url=urls["guard"],
                protocol="http",
                concurrency=max(args.concurrency),
                requests=max(args.concurrency),
                max_tokens=args.max_tokens,
                progress=False,
            )  # warm-up
            for c in args.concurrency:
                got: dict[str, list] = {k: [] for k in urls}
                for _ in range(args.rounds):
                    for name, url in urls.items():
                        got[name].append(
                            run_load(
                                list(PROMPTS),
                                url=url,
                                protocol="http",
                                concurrency=c,
                                requests=args.requests,
                                max_tokens=args.max_tokens,
                                progress=False,
                            )
                        )
                tps = {k: statistics.median(r.tokens_per_s for r in v) for k, v in got.items()}
                ttft = {k: statistics.median(r.ttft_p50_s for r in v) * 1e3 for k, v in got.items()}
                print(
                    f"c={c}: tokens/s guard {tps['guard']:.1f} direct {tps['direct']:.1f} "
                    f"(ratio {tps['guard'] / tps['direct']:.3f}); TTFT p50 guard {ttft['guard']:.1f} ms "
                    f"direct {ttft['direct']:.1f} ms (ratio {ttft['guard'] / ttft['direct']:.3f})"
                )


if __name__ == "__main__":
    main()
