"""Quantization throughput against a plain safetensors read + write of the same checkpoint, and peak memory.

    python -m benchmarks.bench_quant                  # (make bench-quant) two sizes, ~0.64 GB and ~1.25 GB
    python -m benchmarks.bench_quant --reps 1 --rounds 5 --recipe fp8 --json out.json

The synthetic checkpoint is the acceptance shape of issue 17: hidden 1024, LatentMoE (latent 512) with 96
experts top-8, pattern `MEMEM*EMEME` repeated `reps` times, one MTP block, random bf16 weights
(`checkpoint.tiny.random_tensors`), so every size has the same per-layer size and only the layer count grows.

Each measurement runs in a fresh child process (OMP_NUM_THREADS=2) that reports its own seconds (after its
imports) and peak RSS (`ru_maxrss`). Per size, `rounds` rounds run interleaved -- plain, quantize, plain,
quantize, ... -- so the ratio of a round compares runs that saw the same machine load; the table reports
the median ratio and the median MB/s. The plain peer is what any conversion must at least do:
`safetensors.torch.load_file` + `save_file` of every shard. Throughput is MB (1e6 bytes) of *source* per
second, calibration included (default 8 x 128 tokens). If peak RSS is bounded by a few layers plus one
output shard, it stays flat while the checkpoint doubles.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def synthetic_config(reps: int):
    from trtllm_nemotron.config import preset

    return preset("tiny").replace(
        pattern="MEMEM*EMEME" * reps,
        vocab_size=8192,
        hidden_size=1024,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=64,
        mamba_num_heads=32,
        mamba_head_dim=64,
        ssm_state_size=64,
        n_groups=8,
        chunk_size=64,
        n_routed_experts=96,
        num_experts_per_tok=8,
        n_group=1,
        topk_group=1,
        moe_intermediate_size=384,
        moe_shared_expert_intermediate_size=2048,
        moe_latent_size=512,
    )


def _largest_layer_bytes(cfg) -> int:
    from trtllm_nemotron.config import expected_tensors

    per: dict[str, int] = {}
    for name, spec in expected_tensors(cfg).items():
        key = ".".join(name.split(".")[:3]) if name.startswith(("backbone.layers.", "mtp.layers.")) else name
        n = 2
        for d in spec.shape:
            n *= d
        per[key] = per.get(key, 0) + n
    return max(per.values())


def plain_read_write(src: str, out: str) -> float:
    """Seconds to `load_file` + `save_file` every shard of `src` into `out` (the peer of a conversion)."""
    from safetensors.torch import load_file, save_file

    t0 = time.perf_counter()
    Path(out).mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).glob("*.safetensors")):
        save_file(load_file(f), str(Path(out) / f.name))
    return time.perf_counter() - t0


def _child(src: str, out: str, recipe: str, samples: int, seq_len: int) -> None:
    import torch

    from trtllm_nemotron.quant import quantize_checkpoint

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if recipe == "none":  # baseline: the process with the libraries imported, nothing quantized
        summary: dict = {}
    elif recipe == "plain":
        summary = {"seconds": plain_read_write(src, out)}
    else:
        summary = quantize_checkpoint(
            src,
            out,
            recipe=recipe,
            calib_samples=samples,
            calib_seq_len=seq_len,
            progress=False,
            accuracy=False,
            device="cpu",
        )
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(summary))


def _run_child(src: Path, out: Path, recipe: str, samples: int, seq_len: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_quant",
        "--child",
        str(src),
        str(out),
        recipe,
        str(samples),
        str(seq_len),
    ]
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--reps", default="1,2", help="comma-separated pattern repeats (1 -> ~0.64 GB, 2 -> ~1.25 GB)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved plain/quantize rounds per size")
    ap.add_argument("--recipe", default="nvfp4-super")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=128)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where the synthetic checkpoints go (default: a temp dir)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--child", nargs=5, metavar=("SRC", "OUT", "RECIPE", "SAMPLES", "SEQ_LEN"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        src, out, recipe, samples, seq_len = args.child
        _child(src, out, recipe, int(samples), int(seq_len))
        return

    from trtllm_nemotron.checkpoint.tiny import random_tensors
    from trtllm_nemotron.checkpoint.writer import save_checkpoint
    from trtllm_nemotron.quant import nvfp4_native

    nvfp4_native.usable(_probe())  # compile the NVFP4 CPU kernel once, outside the timed runs
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_quant-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        base = _run_child(work, work / "none", "none", 0, 0)
        print(
            f"baseline (torch + trtllm_nemotron imported): peak RSS {base['peak_rss_mb']:.0f} MB", flush=True
        )
        for reps in [int(r) for r in args.reps.split(",")]:
            cfg = synthetic_config(reps)
            src = work / f"src-{reps}"
            t0 = time.perf_counter()
            save_checkpoint(src, cfg, random_tensors(cfg, seed=reps), max_shard_bytes=256 * 2**20)
            gen_s = time.perf_counter() - t0
            rounds = []
            for i in range(args.rounds):
                plain = _run_child(src, work / f"plain-{reps}", "plain", 0, 0)
                q = _run_child(src, work / f"out-{reps}", args.recipe, args.calib_samples, args.calib_seq_len)
                rounds.append(
                    {
                        "plain_s": plain["seconds"],
                        "quant_s": q["seconds"],
                        "ratio": q["seconds"] / plain["seconds"],
                        "quant_rss_mb": q["peak_rss_mb"],
                        "plain_rss_mb": plain["peak_rss_mb"],
                    }
                )
                print(f"  reps {reps} round {i + 1}: " + json.dumps(rounds[-1]), flush=True)
            mb = q["source_bytes"] / 1e6
            row = {
                "layers": len(cfg.pattern),
                "source_gb": q["source_bytes"] / 1e9,
                "output_gb": q["output_bytes"] / 1e9,
                "largest_layer_mb": _largest_layer_bytes(cfg) / 1e6,
                "quant_s_median": statistics.median(r["quant_s"] for r in rounds),
                "plain_s_median": statistics.median(r["plain_s"] for r in rounds),
                "ratio_median": statistics.median(r["ratio"] for r in rounds),
                "ratio_min": min(r["ratio"] for r in rounds),
                "ratio_max": max(r["ratio"] for r in rounds),
                "mb_per_s_median": statistics.median(mb / r["quant_s"] for r in rounds),
                "plain_mb_per_s_median": statistics.median(mb / r["plain_s"] for r in rounds),
                "peak_rss_mb": max(r["quant_rss_mb"] for r in rounds),
                "plain_peak_rss_mb": max(r["plain_rss_mb"] for r in rounds),
                "calibration_tokens": q["calibration_tokens"],
                "generate_seconds": round(gen_s, 1),
                "rounds": rounds,
            }
            results.append(row)
            if not args.keep:
                shutil.rmtree(src, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nrecipe {args.recipe}, calibration {args.calib_samples} x {args.calib_seq_len} tokens, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}, {args.rounds} interleaved rounds per size, "
        f"baseline RSS {base['peak_rss_mb']:.0f} MB"
    )
    print(
        f"{'layers':>6} {'source GB':>9} {'layer MB':>8} {'quant s':>8} {'plain s':>8} {'ratio':>6} "
        f"{'(min-max)':>12} {'MB/s':>7} {'plain MB/s':>10} {'RSS MB':>7} {'plain RSS':>9}"
    )
    for r in results:
        print(
            f"{r['layers']:>6} {r['source_gb']:>9.2f} {r['largest_layer_mb']:>8.0f} {r['quant_s_median']:>8.2f} "
            f"{r['plain_s_median']:>8.2f} {r['ratio_median']:>6.2f} "
            f"{r['ratio_min']:>5.2f}-{r['ratio_max']:<6.2f} {r['mb_per_s_median']:>7.0f} "
            f"{r['plain_mb_per_s_median']:>10.0f} {r['peak_rss_mb']:>7.0f} {r['plain_peak_rss_mb']:>9.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"recipe": args.recipe, "baseline_rss_mb": base["peak_rss_mb"], "results": results}, indent=2
            )
            + "\n"
        )


def _probe():
    import torch

    return torch.zeros(1, 16, dtype=torch.bfloat16)


if __name__ == "__main__":
    main()
