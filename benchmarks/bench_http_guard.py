"""What the HTTP guard in front of tritonserver costs: streaming load over HTTP through the guard (the port `serve`
publishes) vs straight to tritonserver's private HTTP port, side by side on one server, rounds interleaved.

    .venv/bin/python benchmarks/bench_http_guard.py [--engine build/engine] [--rounds 5] [--requests 32]

The server and its guard run in their own process, as under `serve` (the load clients here would otherwise share
the guard's GIL). Prints, per concurrency, the median over rounds of tokens/s and TTFT p50 for both paths and
their ratio (guard / direct). Needs an engine dir (`make build-engine`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from clients.bench import run_load
from triton_repo.bench import PROMPTS
from triton_repo.package import PackageConfig, package

_SERVER = """
import json, sys
from pathlib import Path
from triton_repo.server import ServerConfig, TritonServer, free_ports
h, g, m = free_ports(3)
with TritonServer(ServerConfig(Path(sys.argv[1]), http_port=h, grpc_port=g, metrics_port=m), echo=lambda _: None) as s:
    print(json.dumps({"guard": h, "direct": s.upstream_http_port}), flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", type=Path, default=Path("build/engine"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=32, help="requests per run")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = PackageConfig(max_batch_size=max(args.concurrency), max_seq_len=256, device="cpu")
        repo = package(args.engine, Path(tmp) / "repo", cfg)
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(repo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdin is not None
            ports = json.loads(server.stdout.readline())
            urls = {"guard": f"127.0.0.1:{ports['guard']}", "direct": f"127.0.0.1:{ports['direct']}"}
            load = dict(protocol="http", max_tokens=args.max_tokens, progress=False)
            c_max = max(args.concurrency)
            run_load(list(PROMPTS), url=urls["guard"], concurrency=c_max, requests=c_max, **load)  # warm-up
            for c in args.concurrency:
                got: dict[str, list] = {k: [] for k in urls}
                for _ in range(args.rounds):
                    for name, url in urls.items():
                        got[name].append(
                            run_load(list(PROMPTS), url=url, concurrency=c, requests=args.requests, **load)
                        )
                tps = {k: statistics.median(r.tokens_per_s for r in v) for k, v in got.items()}
                ttft = {k: statistics.median(r.ttft_p50_s for r in v) * 1e3 for k, v in got.items()}
                print(
                    f"c={c}: tokens/s guard {tps['guard']:.1f} direct {tps['direct']:.1f} "
                    f"(ratio {tps['guard'] / tps['direct']:.3f}); TTFT p50 guard {ttft['guard']:.1f} ms "
                    f"direct {ttft['direct']:.1f} ms (ratio {ttft['guard'] / ttft['direct']:.3f})"
                )
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(120)


if __name__ == "__main__":
    main()
