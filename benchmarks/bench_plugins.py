"""Plugin kernels vs their torch references (`make bench-plugins` / `python -m benchmarks.bench_plugins`).

On CUDA: Nemotron 3 Super shapes at batch 1, 64 and 256 (Mamba decode step with an fp32 SSM pool; routing
with E=512, k=22; routed experts X=1024, F=2688 with BF16 and NVFP4 weights, tokens = batch). Each row gives the kernel and reference times, the bytes the op must move (its
compulsory traffic: states read + written, inputs, outputs), the kernel's achieved bandwidth, and that as a
fraction of the device's measured copy bandwidth (a 1 GiB device-to-device copy, read + write).
On CPU (no GPU): says so, and times the torch references and the Triton interpreter at small sizes (the
tiny preset), which checks the paths run but says nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from plugins.latent_moe_routing.reference import latent_moe_routing_ref
from plugins.mamba_state_update.reference import mamba_state_update_ref
from trtllm_nemotron.config import preset


def _mamba_inputs(
    cfg: Any, batch: int, device: str, act: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    H, P, N, G, K = cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.ssm_state_size, cfg.n_groups, cfg.conv_kernel
    conv_dim = H * P + 2 * G * N
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device) * scale

    return dict(
        xbc=rnd(batch, 1, conv_dim).to(act),
        dt=rnd(batch, 1, H).to(act),
        conv_state=rnd(batch, conv_dim, K - 1).to(act),
        ssm_state=rnd(batch, H, P, N),
        conv_weight=rnd(conv_dim, K, scale=0.5).to(act),
        conv_bias=rnd(conv_dim, scale=0.1).to(act),
        dt_bias=rnd(H, scale=0.5),
        A=-torch.exp(rnd(H, scale=0.5)),
        D=rnd(H),
        slot_idx=torch.arange(batch, device=device, dtype=torch.int32),
    )


def _mamba_bytes(inp: dict[str, torch.Tensor]) -> int:
    def nb(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    batch, H, P = inp["xbc"].shape[0], inp["ssm_state"].shape[1], inp["ssm_state"].shape[2]
    y = batch * H * P * 4
    states = 2 * (nb(inp["ssm_state"]) + nb(inp["conv_state"]))  # read + write (pool == batch here)
    params = sum(nb(inp[k]) for k in ("conv_weight", "conv_bias", "dt_bias", "A", "D"))
    return states + nb(inp["xbc"]) + nb(inp["dt"]) + y + params


def _experts_inputs(cfg: Any, T: int, device: str) -> dict[str, torch.Tensor]:
    """Super's expert shapes: x [T, X] bf16, routing of random logits, all E experts' stacked BF16 weights."""
    E, k, X, F = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.expert_dim, cfg.moe_intermediate_size
    g = torch.Generator(device=device).manual_seed(T)
    logits = torch.randn(T, E, generator=g, device=device)
    w, _, counts, perm = latent_moe_routing_ref(logits, torch.zeros(E, device=device), k, 1, 1, True, 5.0)
    kw = dict(
        x=torch.randn(T, X, generator=g, device=device).to(torch.bfloat16),
        weights=w,
        counts=counts,
        perm=perm,
    )
    up = torch.randn(E, F, X, generator=g, device=device) / X**0.5
    down = torch.randn(E, X, F, generator=g, device=device) / F**0.5
    return dict(kw, up=up.to(torch.bfloat16), down=down.to(torch.bfloat16))


def _experts_nvfp4_inputs(cfg: Any, T: int, device: str) -> dict[str, torch.Tensor]:
    from trtllm_nemotron.quant import nvfp4

    kw = _experts_inputs(cfg, T, device)
    out = {n: kw[n] for n in ("x", "weights", "counts", "perm")}
    for name in ("up", "down"):
        q = [nvfp4.quantize(m.float()) for m in kw[name]]
        out[name] = torch.stack([a for a, _, _ in q])
        out[f"{name}_scale"] = torch.stack([b for _, b, _ in q])
        out[f"{name}_scale_2"] = torch.stack([c for _, _, c in q])
    return out


def _experts_bytes(inp: dict[str, torch.Tensor]) -> int:
    """Compulsory traffic: the weights of every expert that received a token, x, routing inputs, out."""
    E = inp["counts"].numel()
    active = int((inp["counts"] > 0).sum())
    per_expert = sum(
        inp[n].numel() * inp[n].element_size() for n in ("up", "down", "up_scale", "down_scale") if n in inp
    )
    T, X = inp["x"].shape
    k = inp["weights"].shape[1]
    return per_expert // E * active + inp["x"].numel() * 2 + T * k * (4 + 4) + T * k * X * 4


def _routing_bytes(T: int, E: int, k: int) -> int:
    return T * E * 4 + E * 4 + T * k * (4 + 4) + E * 4 + T * k * 4


def _time_cpu(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (interpreter: AST rewrite; reference: allocator)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _time_cuda(fn: Callable[[], Any], repeats: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=max(100, repeats * 10)) / 1e3  # ms -> s


def copy_bandwidth(device: str) -> float:
    """Measured device copy bandwidth in bytes/s (read + write of a 1 GiB buffer)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    s = _time_cuda(lambda: dst.copy_(src), 20)
    return 2 * src.numel() / s


def bench_cuda(repeats: int) -> dict[str, Any]:
    from plugins.latent_moe_routing import latent_moe_routing
    from plugins.mamba_state_update import mamba_state_update

    cfg = preset("super-120b")
    bw = copy_bandwidth("cuda")
    rows = []
    for batch in (1, 64, 256):
        inp = _mamba_inputs(cfg, batch, "cuda")
        kw = dict(n_groups=cfg.n_groups)
        ref_in = dict(inp)
        t_k = _time_cuda(partial(mamba_state_update, **inp, **kw), repeats)
        t_r = _time_cuda(partial(mamba_state_update_ref, **ref_in, **kw), repeats)
        rows.append(
            dict(op="mamba_state_update", batch=batch, bytes=_mamba_bytes(inp), kernel_s=t_k, ref_s=t_r)
        )
    E, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    for T in (1, 64, 256):
        logits = torch.randn(T, E, device="cuda")
        bias = torch.randn(E, device="cuda") * 0.05
        rk = dict(top_k=k, routed_scaling_factor=cfg.routed_scaling_factor)
        t_k = _time_cuda(partial(latent_moe_routing, logits, bias, **rk), repeats)
        t_r = _time_cuda(partial(latent_moe_routing_ref, logits, bias, k, 1, 1, True, 5.0), repeats)
        rows.append(
            dict(op="latent_moe_routing", batch=T, bytes=_routing_bytes(T, E, k), kernel_s=t_k, ref_s=t_r)
        )
    from plugins.latent_moe_experts import latent_moe_experts
    from plugins.latent_moe_experts.reference import latent_moe_experts_ref

    names = (
        "x",
        "weights",
        "counts",
        "perm",
        "up",
        "down",
        "up_scale",
        "up_scale_2",
        "down_scale",
        "down_scale_2",
    )
    for quant in (False, True):
        for T in (1, 64, 256):
            inp = _experts_nvfp4_inputs(cfg, T, "cuda") if quant else _experts_inputs(cfg, T, "cuda")
            ref_args = [inp.get(n) for n in names]
            t_k = _time_cuda(partial(latent_moe_experts, **inp), repeats)
            t_r = _time_cuda(partial(latent_moe_experts_ref, *ref_args), max(1, repeats // 5))
            op = "experts_nvfp4" if quant else "experts_bf16"
            rows.append(dict(op=op, batch=T, bytes=_experts_bytes(inp), kernel_s=t_k, ref_s=t_r))
            del inp, ref_args
            torch.cuda.empty_cache()
    for r in rows:
        r["kernel_GBps"] = r["bytes"] / r["kernel_s"] / 1e9
        r["of_copy_bw"] = r["bytes"] / r["kernel_s"] / bw
    return dict(device=torch.cuda.get_device_name(), copy_GBps=bw / 1e9, config="super-120b", rows=rows)


def bench_cpu(repeats: int) -> dict[str, Any]:
    from plugins.latent_moe_routing import latent_moe_routing
    from plugins.mamba_state_update import mamba_state_update

    cfg = preset("tiny")
    rows = []
    for batch in (1, 4):
        inp = _mamba_inputs(cfg, batch, "cpu")
        kw = dict(n_groups=cfg.n_groups)
        t_r = _time_cpu(partial(mamba_state_update_ref, **inp, **kw), repeats)
        os.environ["TRTLLM_NEMOTRON_KERNELS"] = "interpret"
        t_i = _time_cpu(partial(mamba_state_update, **inp, **kw), 1)
        os.environ.pop("TRTLLM_NEMOTRON_KERNELS")
        rows.append(dict(op="mamba_state_update", config="tiny", batch=batch, ref_s=t_r, interpret_s=t_i))
    for name, E, k, ng, tg in (("tiny", 16, 4, 4, 2), ("super", 512, 22, 1, 1)):
        T = 8
        logits, bias = torch.randn(T, E), torch.randn(E) * 0.05
        rk = dict(top_k=k, n_group=ng, topk_group=tg, routed_scaling_factor=2.5)
        t_r = _time_cpu(partial(latent_moe_routing_ref, logits, bias, k, ng, tg, True, 2.5), repeats)
        os.environ["TRTLLM_NEMOTRON_KERNELS"] = "interpret"
        t_i = _time_cpu(partial(latent_moe_routing, logits, bias, **rk), 1)
        os.environ.pop("TRTLLM_NEMOTRON_KERNELS")
        rows.append(dict(op="latent_moe_routing", config=name, batch=T, ref_s=t_r, interpret_s=t_i))
    from plugins.latent_moe_experts import latent_moe_experts
    from plugins.latent_moe_experts.reference import latent_moe_experts_ref

    for T in (1, 8):
        inp = _experts_inputs(cfg, T, "cpu")
        t_r = _time_cpu(partial(latent_moe_experts_ref, *inp.values()), repeats)
        os.environ["TRTLLM_NEMOTRON_KERNELS"] = "interpret"
        t_i = _time_cpu(partial(latent_moe_experts, **inp), 1)
        os.environ.pop("TRTLLM_NEMOTRON_KERNELS")
        rows.append(dict(op="latent_moe_experts", config="tiny", batch=T, ref_s=t_r, interpret_s=t_i))
    return dict(device="cpu (no CUDA GPU)", rows=rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if torch.cuda.is_available():
        res = bench_cuda(args.repeats)
        print(f"device: {res['device']}; measured copy bandwidth {res['copy_GBps']:.0f} GB/s; shapes: Super")
        print(
            f"{'op':<20} {'batch':>5} {'MB':>8} {'kernel us':>10} {'ref us':>10} {'speedup':>8} {'GB/s':>8} {'of copy':>8}"
        )
        for r in res["rows"]:
            print(
                f"{r['op']:<20} {r['batch']:>5} {r['bytes'] / 1e6:>8.2f} {r['kernel_s'] * 1e6:>10.1f} "
                f"{r['ref_s'] * 1e6:>10.1f} {r['ref_s'] / r['kernel_s']:>7.1f}x {r['kernel_GBps']:>8.0f} "
                f"{r['of_copy_bw']:>7.0%}"
            )
    else:
        print(
            "no CUDA GPU: timing the torch references and the Triton interpreter at small sizes (tiny preset);"
        )
        print(
            "these say the paths run, not how fast the kernels are (run on a GPU host for bandwidth numbers)"
        )
        res = bench_cpu(args.repeats)
        print(f"{'op':<20} {'config':<6} {'batch':>5} {'reference ms':>13} {'interpreter ms':>15}")
        for r in res["rows"]:
            print(
                f"{r['op']:<20} {r['config']:<6} {r['batch']:>5} {r['ref_s'] * 1e3:>13.3f} {r['interpret_s'] * 1e3:>15.1f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
