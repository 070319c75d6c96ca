"""`python -m clients PROMPT... --url URL [--protocol grpc|http] [--stream]`: call a running Triton server.

The text goes to stdout (streamed with --stream), per-request stats to stderr, `--json` prints the results
(`ClientResult.to_json()`) instead. Several prompts (or `--batch FILE`, one prompt per line) run concurrently.
Exit status 1 with a clear message when the server cannot be reached or rejects the request.
"""

from __future__ import annotations

import argparse
import json
import sys

from clients.bench import percentile
from clients.client import ClientResult, generate_batch, stream
from trtllm_nemotron.errors import ClientError


def _stats(r: ClientResult) -> str:
    ttft = f"{r.ttft_s * 1e3:.1f} ms" if r.ttft_s is not None else "n/a"
    s = (
        f"[{r.num_tokens} tokens, {r.tokens_per_s:.1f} tok/s, TTFT {ttft}, "
        f"ITL p50 {percentile(r.itl_s, 50) * 1e3:.1f} ms, finish {r.finish_reason}"
    )
    if r.acceptance_rate is not None:
        s += f", acceptance {r.acceptance_rate:.2f} (length {r.acceptance_length or 0:.2f})"
    return s + f"; {r.protocol} {r.url} model {r.model}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clients", description=__doc__.splitlines()[0])
    ap.add_argument("prompts", nargs="*")
    ap.add_argument("--url", required=True, help="host:port of the server (gRPC 8001 / HTTP 8000 by default)")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--stream", action="store_true", help="print text as it arrives")
    ap.add_argument("--model", default="nemotron")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    ap.add_argument(
        "--batch", type=argparse.FileType("r"), default=None, help="file with one prompt per line"
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    prompts = list(a.prompts) + ([ln.rstrip("\n") for ln in a.batch if ln.strip()] if a.batch else [])
    if not prompts:
        ap.error("give a prompt (or --batch FILE)")
    opts = dict(
        max_tokens=a.max_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        seed=a.seed,
        stop=a.stop,
        model=a.model,
        timeout=a.timeout,
    )
    try:
        if len(prompts) == 1 and a.stream and not a.json:
            s = stream(prompts[0], url=a.url, protocol=a.protocol, **opts)
            for delta in s:
                sys.stdout.write(delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
            print(_stats(s.result), file=sys.stderr)
            return 0
        results = generate_batch(
            prompts, url=a.url, protocol=a.protocol, concurrency=a.concurrency, stream=a.stream, **opts
        )
    except ClientError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    if a.json:
        out = [r.to_json() for r in results]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
        return 0
    for r in results:
        print(r.text)
        print(_stats(r), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
