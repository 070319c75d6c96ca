"""Interleaved A/B of the runtime's decode speed between two source trees (e.g. before / after a change).

    git worktree add /tmp/before <rev>    # or: mkdir /tmp/before && git archive <rev> | tar -x -C /tmp/before
    python -m benchmarks.ab_runtime /tmp/before . [--threads 1] [--new-tokens 64] [--rounds 5]
                                    [--backends native,eager] [--batches 1,16] [--model DIR]

One long-lived worker process per tree (`PYTHONPATH=<tree>`, this venv), each holding an engine per (backend,
MTP 0 / 3); for every configuration the two run one greedy generation each, back to back, in alternating order,
round after round. Each row reports the median tokens/s of each side and the median (and range) of the per-round
ratios after / before, so a host whose speed drifts over minutes still gives comparable ratios. One intra-op
thread by default: on a shared, oversubscribed host, spinning OpenMP threads turn contention into 10x slowdowns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from trtllm_nemotron.runtime import Engine, SamplingParams
from benchmarks.bench_runtime import PROMPT
path, n_new, backends, batches = sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","), sys.argv[5]
max_batch = max(int(b) for b in batches.split(","))
engs = {(be, mtp): Engine.load(path, mtp=mtp, max_batch_size=max_batch, max_seq_len=n_new + 64, backend=be)
        for be in backends for mtp in (0, 3)}
p = SamplingParams(max_tokens=n_new, ignore_eos=True)
print("ready", flush=True)
for line in sys.stdin:
    be, mtp, b = line.split()
    e = engs[(be, int(mtp))]
    t0 = time.perf_counter()
    out = [e.generate(PROMPT, p)] if b == "1" else e.generate_batch([PROMPT] * int(b), p)
    print(json.dumps(sum(len(c.token_ids) for c in out) / (time.perf_counter() - t0)), flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--new-tokens", default="64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--backends", default="native,eager")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: the embedded model)")
    args = ap.parse_args(argv)
    model = args.model or Path(__file__).resolve().parents[1] / "trtllm_nemotron" / "assets" / "nemotron-tiny"
    procs = {}
    for side in ("before", "after"):
        tree = getattr(args, side).resolve()
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=args.threads)
        cmd = [
            sys.executable,
            "-c",
            WORKER,
            args.threads,
            str(model),
            args.new_tokens,
            args.backends,
            args.batches,
        ]
        procs[side] = subprocess.Popen(
            cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if procs[side].stdout.readline().strip() != "ready":
            raise SystemExit(f"the {side} worker ({tree}) did not start")
    cfgs = [
        (be, mtp, b) for be in args.backends.split(",") for mtp in (0, 3) for b in args.batches.split(",")
    ]

    def ask(side: str, cfg) -> float:
        procs[side].stdin.write(" ".join(map(str, cfg)) + "\n")
        procs[side].stdin.flush()
        return json.loads(procs[side].stdout.readline())

    for cfg in cfgs:  # warm-up
        for side in procs:
            ask(side, cfg)
    res = {cfg: {"before": [], "after": [], "ratio": []} for cfg in cfgs}
    for r in range(args.rounds):
        for cfg in cfgs:
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            got = {side: ask(side, cfg) for side in order}
            for side, v in got.items():
                res[cfg][side].append(v)
            res[cfg]["ratio"].append(got["after"] / got["before"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    med = statistics.median
    print(
        f"| backend | MTP | batch | before tok/s | after tok/s | after / before (median of {args.rounds}; range) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for (be, mtp, b), d in res.items():
        print(
            f"| {be} | {mtp} | {b} | {med(d['before']):.1f} | {med(d['after']):.1f} | "
            f"**{med(d['ratio']):.2f}** ({min(d['ratio']):.2f}-{max(d['ratio']):.2f}) |"
        )
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
