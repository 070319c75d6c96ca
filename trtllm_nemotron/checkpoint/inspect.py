"""`inspect`: what a checkpoint (or a lone config.json, or an engine dir) holds, and everything wrong with it.

Design notes
- One function builds a plain dict report (`inspect_path`), one renders it as text (`format_report`); the
  CLI prints either the text or the dict as JSON. Only safetensors headers are read, so inspecting the
  Super checkpoint takes seconds.
- Parameter counts come from the config (`NemotronHConfig.parameter_counts`: total, active per token, MTP)
  and, when tensors are present, from the files. The file count is of logical weights: an NVFP4 packed
  uint8 weight counts 2 parameters per byte, and scale tensors (`weight_scale`, `weight_scale_2`,
  `input_scale`, `k_scale`, `v_scale`) are not parameters. So a complete checkpoint's file count equals the
  config's total, quantized or not.
- Engine dirs (a `build.json` inside): the builder owns the manifest check. If `builder.manifest` is
  importable, its `verify_engine_dir(path) -> list[str]` problems are reported; the embedded HF checkpoint
  (`<engine>/checkpoint/`) is inspected as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from trtllm_nemotron.checkpoint.formats import SCALE_SUFFIXES
from trtllm_nemotron.checkpoint.reader import ST_DTYPES as _ST_NAMES
from trtllm_nemotron.checkpoint.reader import CheckpointReader, open_checkpoint, read_config
from trtllm_nemotron.checkpoint.validate import format_problems, quant_info, validate
from trtllm_nemotron.config import LAYER_CHARS, NemotronHConfig, expected_tensors

AUX_SUFFIXES = tuple(f".{s}" for s in SCALE_SUFFIXES)


def architecture(cfg: NemotronHConfig) -> dict[str, Any]:
    """A JSON-able summary of the layer stack and the dimensions that matter for deployment."""
    counts = {LAYER_CHARS[c]: cfg.pattern.count(c) for c in LAYER_CHARS if c in cfg.pattern}
    arch: dict[str, Any] = {
        "pattern": cfg.pattern,
        "num_layers": cfg.num_hidden_layers,
        "layer_counts": counts,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    chars = cfg.pattern + (cfg.mtp_pattern if cfg.num_nextn_predict_layers else "")
    if "*" in chars:
        arch["attention"] = {
            "num_heads": cfg.num_attention_heads,
            "num_kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
        }
    if "M" in chars:
        arch["mamba"] = {
            "num_heads": cfg.mamba_num_heads,
            "head_dim": cfg.mamba_head_dim,
            "state_size": cfg.ssm_state_size,
            "n_groups": cfg.n_groups,
            "conv_kernel": cfg.conv_kernel,
            "d_inner": cfg.d_inner,
            "chunk_size": cfg.chunk_size,
        }
    if "E" in chars:
        arch["moe"] = {
            "num_experts": cfg.n_routed_experts,
            "top_k": cfg.num_experts_per_tok,
            "intermediate_size": cfg.moe_intermediate_size,
            "shared_expert_size": cfg.shared_expert_size if cfg.n_shared_experts else 0,
            "latent_size": cfg.moe_latent_size,
            "n_group": cfg.n_group,
            "topk_group": cfg.topk_group,
            "routed_scaling_factor": cfg.routed_scaling_factor,
        }
    if "-" in chars:
        arch["mlp"] = {"intermediate_size": cfg.intermediate_size}
    arch["mtp"] = (
        {"num_blocks": cfg.num_nextn_predict_layers, "pattern": cfg.mtp_pattern}
        if cfg.num_nextn_predict_layers
        else None
    )
    return arch


def file_parameter_counts(reader: CheckpointReader) -> dict[str, int]:
    """Parameters actually stored (logical count: packed NVFP4 x2, scale tensors excluded)."""
    total = mtp = 0
    for name in reader.names():
        if name.endswith(AUX_SUFFIXES):
            continue
        n = reader.numel(name)
        if reader.st_dtype(name) == "U8" and f"{name.removesuffix('.weight')}.weight_scale" in reader:
            n *= 2  # two fp4 values per byte
        total += n
        if name.startswith("mtp."):
            mtp += n
    return {"total": total, "mtp": mtp}


def _quant_summary(reader: CheckpointReader) -> dict[str, Any] | None:
    q = quant_info(reader.quantization)
    if q is None:
        return None
    formats: dict[str, int] = {}
    for name in expected_tensors(reader.config):
        if name.endswith("_proj.weight") or name == "lm_head.weight":
            algo = q.module_algo(name.removesuffix(".weight"))
            if algo:
                formats[algo] = formats.get(algo, 0) + 1
    return {
        "quant_algo": q.algo,
        "kv_cache_quant_algo": q.kv_cache_algo,
        "quantized_linears": formats,
        "exclude_modules": list(q.exclude),
    }


def _engine_problems(path: Path) -> tuple[list[str], str | None]:
    """The builder's manifest check, if the builder package is installed (never hides its import errors)."""
    if importlib.util.find_spec("builder") is None or importlib.util.find_spec("builder.manifest") is None:
        return [], "builder.manifest is not installed: the engine manifest (build.json) was not verified"
    manifest = importlib.import_module("builder.manifest")
    return [f"engine: {p}" for p in manifest.verify_engine_dir(path)], None


_DETECT: Any = object()


def _driver_check(path: Path, host: dict[str, str] | None | Any) -> dict[str, Any] | None:
    """The engine's plugin-PTX driver requirement (build.json) against this host's driver (plugins.ptx)."""
    if importlib.util.find_spec("plugins") is None:
        return None
    ptx = importlib.import_module("plugins.ptx")
    try:
        manifest = json.loads((path / "build.json").read_text())
    except (OSError, ValueError):
        return None  # the manifest check reports an unreadable build.json
    reqs = ptx.engine_requirements(manifest) if isinstance(manifest, dict) else {}
    if not reqs:
        return None
    if host is _DETECT:
        host = ptx.host_driver()
    warnings = [f"{sm}: {w}" for sm, r in reqs.items() if (w := ptx.driver_warning(r, host))]
    return {"requirements": reqs, "host": host, "warnings": warnings}


def inspect_path(path: str | Path, *, host_driver: dict[str, str] | None | Any = _DETECT) -> dict[str, Any]:
    """The report for a checkpoint dir, an engine dir (with build.json) or a lone config.json.

    For an engine dir whose plugins were compiled (GPU targets), `driver` compares the PTX's driver need
    (build.json) with `host_driver` ({"cuda": "13.0", "driver": "580.65.06"}; default: detected, None on a
    host without an NVIDIA driver); an older driver is a warning (in `notes`), not a problem.
    """
    path = Path(path)
    report: dict[str, Any] = {"path": str(path), "notes": []}
    problems: list[str] = []
    ckpt_dir: Path | None = None
    if path.is_file():
        report["kind"] = "config"
        cfg = read_config(path)
    else:
        ckpt_dir = path
        if (path / "build.json").is_file():
            report["kind"] = "engine"
            engine_problems, note = _engine_problems(path)
            problems += engine_problems
            report["engine"] = {"problems": engine_problems, "verified": note is None}
            if note:
                report["notes"].append(note)
            driver = _driver_check(path, host_driver)
            if driver is not None:
                report["driver"] = driver
                report["notes"] += [f"WARNING: {w}" for w in driver["warnings"]]
            if (path / "checkpoint").is_dir():
                ckpt_dir = path / "checkpoint"
        else:
            report["kind"] = "checkpoint"
        cfg = None
    reader = open_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    try:
        if reader is not None:
            cfg = reader.config
        assert cfg is not None
        counts = cfg.parameter_counts()
        expected = expected_tensors(cfg)
        report["config"] = cfg.to_dict()
        report["architecture"] = architecture(cfg)
        report["parameters"] = dict(counts)
        report["expected_tensors"] = len(expected)
        if reader is None:
            report.update(tensors=0, files=0, dtypes={}, dtype_bytes={}, size_bytes=0, quantization=None)
        else:
            dtypes: dict[str, int] = {}
            dbytes: dict[str, int] = {}
            for name in reader.names():
                dt = _ST_NAMES.get(reader.st_dtype(name), reader.st_dtype(name))
                dtypes[dt] = dtypes.get(dt, 0) + 1
                dbytes[dt] = dbytes.get(dt, 0) + reader.nbytes(name)
            fcounts = file_parameter_counts(reader)
            report["parameters"]["files_total"] = fcounts["total"]
            report["parameters"]["files_mtp"] = fcounts["mtp"]
            report.update(
                tensors=len(reader),
                files=len(reader.files),
                dtypes=dict(sorted(dtypes.items())),
                dtype_bytes=dict(sorted(dbytes.items())),
                size_bytes=reader.size_bytes(),
                quantization=_quant_summary(reader),
            )
            found = validate(reader)
            problems += [str(p) for p in found]
            if found:
                report["problem_summary"] = format_problems(found, reader.path)
    finally:
        if reader is not None:
            reader.close()
    report["problems"] = problems
    return report


def _n(x: int) -> str:
    if x >= 10**9:
        return f"{x / 1e9:.2f}B ({x:,})"
    if x >= 10**6:
        return f"{x / 1e6:.2f}M ({x:,})"
    return f"{x:,}"


def _size(b: int) -> str:
    if b <= 0:
        return "0 B"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = min(int(math.log(b, 1024)), len(units) - 1)
    return f"{b / 1024**i:.1f} {units[i]}" if i else f"{b} B"


def format_report(r: dict[str, Any]) -> str:
    """Human-readable text of an `inspect_path` report."""
    a = r["architecture"]
    names = {"linear_attention": "mamba", "full_attention": "attention", "moe": "moe", "mlp": "mlp"}
    counts = ", ".join(f"{n} {names[k]}" for k, n in a["layer_counts"].items())
    what = {"config": "config", "checkpoint": "checkpoint", "engine": "engine dir"}[r["kind"]]
    lines = [f"NemotronH {what}: {r['path']}"]
    lines.append(f"  pattern        {a['pattern']}")
    lines.append(f"  layers         {a['num_layers']} ({counts})")
    lines.append(f"  hidden/vocab   {a['hidden_size']} / {a['vocab_size']}")
    if "attention" in a:
        at = a["attention"]
        lines.append(
            f"  attention      {at['num_heads']} q / {at['num_kv_heads']} kv heads x {at['head_dim']} (no RoPE)"
        )
    if "mamba" in a:
        m = a["mamba"]
        lines.append(
            f"  mamba          {m['num_heads']} heads x {m['head_dim']}, state {m['state_size']}, "
            f"groups {m['n_groups']}, d_inner {m['d_inner']}, conv {m['conv_kernel']}"
        )
    if "moe" in a:
        e = a["moe"]
        latent = f", latent {e['latent_size']}" if e["latent_size"] else ""
        groups = f", groups {e['n_group']} (top {e['topk_group']})" if e["n_group"] > 1 else ""
        lines.append(
            f"  moe            {e['num_experts']} experts, top-{e['top_k']}, intermediate {e['intermediate_size']}, "
            f"shared {e['shared_expert_size']}{latent}{groups}, scale {e['routed_scaling_factor']}"
        )
    mtp = a["mtp"]
    mtp_text = f"{mtp['num_blocks']} block(s), pattern {mtp['pattern']}" if mtp else "none"
    lines.append(f"  mtp            {mtp_text}")
    p = r["parameters"]
    lines.append(f"  parameters     total {_n(p['total'])}")
    if "files_total" in p:
        lines.append(f"                 in files {_n(p['files_total'])}")
    lines.append(f"                 active/token {_n(p['active'])}, mtp {_n(p['mtp'])}")
    if r["kind"] != "config":
        lines.append(
            f"  tensors        {r['tensors']} (expected {r['expected_tensors']}) in {r['files']} file(s), "
            f"{_size(r['size_bytes'])} on disk"
        )
        dts = ", ".join(f"{d} {n} ({_size(r['dtype_bytes'][d])})" for d, n in r["dtypes"].items())
        lines.append(f"  dtypes         {dts}")
        q = r["quantization"]
        if q:
            fm = ", ".join(f"{n} {k}" for k, n in q["quantized_linears"].items()) or "no linears"
            lines.append(
                f"  quantization   {q['quant_algo']} ({fm}), kv cache {q['kv_cache_quant_algo'] or 'unquantized'}"
            )
        else:
            lines.append("  quantization   none")
    else:
        lines.append(f"  tensors        {r['expected_tensors']} expected (config only: no files checked)")
    for note in r["notes"]:
        lines.append(f"  note: {note}")
    if not r["problems"]:
        lines.append("  problems       none")
    else:
        engine = [x for x in r["problems"] if x.startswith("engine: ")]
        lines.append(f"  problems       {len(r['problems'])}")
        lines += [f"    - {x}" for x in engine]
        if r.get("problem_summary"):
            lines += ["    " + line for line in r["problem_summary"].splitlines()]
    return "\n".join(lines)
