"""Quantization throughput and peak memory on synthetic checkpoints of growing size.

    python -m benchmarks.bench_quant                 # (make bench-quant) two sizes, ~1.0 GB and ~2.1 GB
    python -m benchmarks.bench_quant --reps 2,4 --recipe fp8 --json out.json

A synthetic Super-like checkpoint (Mamba, LatentMoE with 32 experts, attention, one MTP depth; hidden 1024;
random bf16 weights from `checkpoint.tiny.random_tensors`) is written for each size: the layer pattern
`MEMEM*E` is repeated `reps` times, so every size has the *same* per-layer size and only the layer count
grows. Each quantization runs in a fresh child process (OMP_NUM_THREADS=2) that reports its own peak RSS
(`ru_maxrss`), so the numbers are not polluted by the generator. Throughput is MB (1e6 bytes) of *source*
weights per second, calibration included (default 8 x 128 tokens). If peak RSS is bounded by one layer plus
one output shard, it stays flat while the checkpoint doubles.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def synthetic_config(reps: int):
    from trtllm_nemotron.config import preset

    return preset("tiny").replace(
        pattern="MEMEM*E" * reps,
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
        n_routed_experts=32,
        num_experts_per_tok=4,
        n_group=1,
        topk_group=1,
        moe_intermediate_size=1024,
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


def _child(src: str, out: str, recipe: str, samples: int, seq_len: int) -> None:
    import torch

    from trtllm_nemotron.quant import quantize_checkpoint

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if recipe == "none":  # baseline: the process with the libraries imported, nothing quantized
        summary: dict = {}
    else:
        summary = quantize_checkpoint(
            src,
            out,
            recipe=recipe,
            calib_samples=samples,
            calib_seq_len=seq_len,
            progress=True,
            accuracy=False,
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
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--reps", default="3,7", help="comma-separated pattern repeats (3 -> ~1.0 GB, 7 -> ~2.1 GB)"
    )
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
            src, out = work / f"src-{reps}", work / f"out-{reps}"
            t0 = time.perf_counter()
            save_checkpoint(src, cfg, random_tensors(cfg, seed=reps), max_shard_bytes=256 * 2**20)
            gen_s = time.perf_counter() - t0
            r = _run_child(src, out, args.recipe, args.calib_samples, args.calib_seq_len)
            row = {
                "layers": len(cfg.pattern),
                "source_gb": r["source_bytes"] / 1e9,
                "output_gb": r["output_bytes"] / 1e9,
                "largest_layer_mb": _largest_layer_bytes(cfg) / 1e6,
                "seconds": r["seconds"],
                "mb_per_s": r["source_mb_per_s"],
                "peak_rss_mb": r["peak_rss_mb"],
                "calibration_tokens": r["calibration_tokens"],
                "generate_seconds": round(gen_s, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(src, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nrecipe {args.recipe}, calibration {args.calib_samples} x {args.calib_seq_len} tokens, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}, baseline RSS {base['peak_rss_mb']:.0f} MB"
    )
    print(
        f"{'layers':>6} {'source GB':>9} {'output GB':>9} {'layer MB':>8} {'s':>7} {'MB/s':>7} "
        f"{'peak RSS MB':>11}"
    )
    for r in results:
        print(
            f"{r['layers']:>6} {r['source_gb']:>9.2f} {r['output_gb']:>9.2f} {r['largest_layer_mb']:>8.0f} "
            f"{r['seconds']:>7.1f} {r['mb_per_s']:>7.1f} {r['peak_rss_mb']:>11.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"recipe": args.recipe, "baseline_rss_mb": base["peak_rss_mb"], "results": results}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
