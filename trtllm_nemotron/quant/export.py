"""`quantize_checkpoint`: BF16 HF checkpoint -> ModelOpt-format HF checkpoint, streamed tensor by tensor.

Pipeline (one pass over the source, in checkpoint order):
    embeddings -> for each backbone layer i: calibrate layer i (calib.LayerCalibrator), then quantize and
    write its tensors -> norm_f, lm_head, mtp.* (copied, never quantized)
Per linear the recipe quantizes (spec §5.5):
    FP8    X.weight F8_E4M3 [out, in], X.weight_scale F32 [], X.input_scale F32 []
    NVFP4  X.weight U8 [out, in/2], X.weight_scale F8_E4M3 [out, in/16], X.weight_scale_2 F32 [],
           X.input_scale F32 []
    FP8 KV k_proj.k_scale / v_proj.v_scale F32 [] on backbone attention layers
Everything else is written in BF16 (the model dtype of the released checkpoints), except tensors the config
declares fp32 (the router's `e_score_correction_bias`), which keep their source dtype.

Memory is bounded by one layer plus one output shard: source bytes are read with `os.pread` into private
buffers (`TensorSource`) instead of safetensors' mmap, whose touched pages would stay resident for as long
as the file is open and make RSS grow with the checkpoint; the writer flushes every `max_shard_bytes`.
Output is atomic (`checkpoint.save_checkpoint`: temp dir beside OUT, renamed at the end; removed on any
error or Ctrl-C). All input checks run before the first byte is written.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trtllm_nemotron.checkpoint import check_checkpoint, open_checkpoint
from trtllm_nemotron.checkpoint.formats import (
    FP8,
    INPUT_SCALE,
    K_SCALE,
    NVFP4,
    NVFP4_BLOCK,
    V_SCALE,
    WEIGHT_SCALE,
    WEIGHT_SCALE_2,
)
from trtllm_nemotron.checkpoint.reader import CheckpointReader
from trtllm_nemotron.checkpoint.writer import TOKENIZER_FILES, save_checkpoint
from trtllm_nemotron.config import expected_tensors
from trtllm_nemotron.errors import NemotronError, QuantError
from trtllm_nemotron.quant import fp8, nvfp4
from trtllm_nemotron.quant.calib import LayerCalibrator, calibration_ids, load_calib_text, tokenize
from trtllm_nemotron.quant.modelopt_config import hf_quant_config, quantization_config, quantized_modules
from trtllm_nemotron.quant.recipes import get_recipe

DEFAULT_MAX_SHARD_BYTES = 512 * 2**20
_EXPERT_IDX = re.compile(r"\.experts\.(\d+)\.")


class TensorSource:
    """Reads checkpoint tensors with `os.pread` into private memory (no mmap), using the reader's index."""

    def __init__(self, reader: CheckpointReader) -> None:
        self.reader = reader
        self._fds: dict[Path, int] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}

    def _header(self, f: Path) -> tuple[int, dict[str, Any]]:
        if f not in self._headers:
            fd = os.open(f, os.O_RDONLY)
            self._fds[f] = fd
            n = int.from_bytes(os.pread(fd, 8, 0), "little")
            self._headers[f] = (8 + n, json.loads(os.pread(fd, n, 8)))
        return self._headers[f]

    def get(self, name: str) -> torch.Tensor:
        r = self.reader
        f, key, shape, dtype = r.source_file(name), r.source_name(name), tuple(r.shape(name)), r.dtype(name)
        base, header = self._header(f)
        start, end = header[key]["data_offsets"]
        stored = tuple(header[key]["shape"])
        if stored != shape:  # one expert of a fused [E, ...] tensor: a contiguous slice
            m = _EXPERT_IDX.search(name)
            if m is None:
                raise QuantError(f"{name}: shape {shape}, its stored tensor {key}: {stored} (not an expert)")
            e = int(m[1])
            per = (end - start) // stored[0]
            start, end = start + e * per, start + (e + 1) * per
        buf = bytearray(end - start)
        view, got = memoryview(buf), 0
        while got < len(buf):
            chunk = os.preadv(self._fds[f], [view[got:]], base + start + got)
            if chunk <= 0:
                raise QuantError(
                    f"{f} ended early while reading {name}; the shard is truncated, re-download it"
                )
            got += chunk
        if not buf:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds, self._headers = {}, {}


def _check_inputs(reader: CheckpointReader, quantized: dict[str, str]) -> None:
    if reader.quantization is not None:
        raise QuantError(
            f"{reader.path} is already quantized "
            f"({reader.quantization.get('quantization', reader.quantization)}); "
            "quantize the BF16 source checkpoint instead"
        )
    check_checkpoint(reader)
    bad = [
        f"{m} {list(reader.shape(m + '.weight'))}"
        for m, fmt in quantized.items()
        if fmt == NVFP4 and reader.shape(m + ".weight")[-1] % NVFP4_BLOCK
    ]
    if bad:
        raise QuantError(
            f"NVFP4 needs every quantized linear's input dimension to be a multiple of {NVFP4_BLOCK}; "
            f"{len(bad)} are not: {bad[:6]}{' ...' if len(bad) > 6 else ''}. Use the fp8 recipe, or a model "
            "whose dimensions are multiples of 16"
        )


def _layer_of(name: str) -> int | None:
    if name.startswith("backbone.layers."):
        return int(name.split(".")[2])
    return None


def quantize_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    recipe: str,
    calib_text: str | Path | None = None,
    calib_samples: int = 8,
    calib_seq_len: int = 128,
    progress: bool = True,
    accuracy: bool = True,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    calib_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Quantize checkpoint `src` with `recipe` into `out` (ModelOpt HF layout). Returns a summary dict.

    calib_text: a text file (Path, or str naming a file), the text itself (other str), or None (built-in);
    calib_samples x calib_seq_len tokens of it run through the network, layer by layer. accuracy: also run
    `accuracy_report(out, src)`, which writes `out/accuracy.json` (the summary's "accuracy" key).
    max_shard_bytes: output shard cap; peak memory is about one layer plus one shard.
    Raises QuantError / CheckpointError (bad recipe, source, shapes or output path) before writing anything.
    """
    from tqdm import tqdm

    rec = get_recipe(recipe)
    src, out = Path(src), Path(out)
    if out.absolute() == src.absolute():
        raise QuantError(f"output {out} is the source checkpoint; choose a different output directory")
    t0 = time.perf_counter()
    with open_checkpoint(src) as reader:
        cfg = reader.config
        quantized = quantized_modules(cfg, rec)
        _check_inputs(reader, quantized)
        expected = expected_tensors(cfg)
        names = list(expected)
        kv_modules = (
            {
                n.removesuffix(".weight")
                for n in names
                if n.startswith("backbone.") and n.endswith((".k_proj.weight", ".v_proj.weight"))
            }
            if rec.kv_cache
            else set()
        )
        need_calib = bool(quantized or kv_modules)
        hfq = hf_quant_config(cfg, rec)
        raw = dict(cfg.raw if cfg.raw is not None else cfg.to_dict())
        raw.pop("quantization_config", None)
        if hfq is not None:
            raw["quantization_config"] = quantization_config(hfq)
        out_cfg = cfg.replace(raw=raw)
        extra: dict[str, str | bytes] = {}
        if hfq is not None:
            extra["hf_quant_config.json"] = json.dumps(hfq, indent=4)
        tokenizer_dir = src if any((src / f).is_file() for f in TOKENIZER_FILES) else None
        ids = None
        if need_calib:  # text problems surface before anything is written
            text = load_calib_text(calib_text)
            ids = calibration_ids(tokenize(text, tokenizer_dir, cfg.vocab_size), calib_samples, calib_seq_len)
        n_calib_tokens = 0 if ids is None else ids.numel()
        source = TensorSource(reader)
        total_bytes = sum(reader.nbytes(n) for n in names)
        counts = {FP8: 0, NVFP4: 0}
        written: dict[str, int] = {"tensors": 0, "bytes": 0}
        amax: dict[str, float] = {}  # of the layer being written: {module: amax, "<k|v>_proj#out": amax}

        def emit(name: str, t: torch.Tensor) -> tuple[str, torch.Tensor]:
            written["tensors"] += 1
            written["bytes"] += t.numel() * t.element_size()
            return name, t

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            cal: LayerCalibrator | None = None
            if ids is not None:
                cal = LayerCalibrator(cfg, ids, source.get, set(quantized), kv_modules, dtype=calib_dtype)
            done_layer = -1
            bar = tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"quantize {rec.name}",
                file=sys.stderr,
                disable=not progress,
                dynamic_ncols=True,
            )
            try:
                for name in names:
                    layer = _layer_of(name)
                    if cal is not None and layer is not None and layer > done_layer:
                        amax.clear()
                        amax.update(cal.run_layer(layer))  # layers are contiguous in expected_tensors order
                        done_layer = layer
                    yield from _convert(name, source.get(name))
                    bar.update(reader.nbytes(name))
            finally:
                bar.close()

        def _convert(name: str, w: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
            module = name.removesuffix(".weight")
            fmt = quantized.get(module) if name.endswith(".weight") else None
            if fmt == FP8:
                q, s = fp8.quantize(w)
                counts[FP8] += 1
                yield emit(name, q)
                yield emit(f"{module}.{WEIGHT_SCALE}", s)
                yield emit(f"{module}.{INPUT_SCALE}", fp8.scale_from_amax(amax.get(module, 0.0)))
            elif fmt == NVFP4:
                p, s, s2 = nvfp4.quantize(w)
                counts[NVFP4] += 1
                yield emit(name, p)
                yield emit(f"{module}.{WEIGHT_SCALE}", s)
                yield emit(f"{module}.{WEIGHT_SCALE_2}", s2)
                yield emit(f"{module}.{INPUT_SCALE}", nvfp4.global_scale_from_amax(amax.get(module, 0.0)))
            else:
                keep = expected[name].dtype == "float32" or not w.is_floating_point()
                yield emit(name, w if keep else w.to(torch.bfloat16))
            if module in kv_modules:
                kind = K_SCALE if module.endswith("k_proj") else V_SCALE
                yield emit(f"{module}.{kind}", fp8.scale_from_amax(amax.get(module + "#out", 0.0)))

        meta = {"format": "pt", "producer": f"trtllm-nemotron (recipe {rec.name}, ModelOpt 0.47 HF format)"}
        try:
            save_checkpoint(
                out,
                out_cfg,
                tensors(),
                tokenizer_dir=tokenizer_dir,
                max_shard_bytes=max_shard_bytes,
                metadata=meta,
                extra_files=extra,
            )
        except NemotronError:
            raise
        except OSError as e:
            raise QuantError(
                f"could not write the quantized checkpoint to {out} ({type(e).__name__}: {e}); check that "
                f"{out.absolute().parent} is writable and has free space (the source holds "
                f"{total_bytes / 2**30:.2f} GiB; the output is smaller). Nothing was left behind"
            ) from e
        finally:
            source.close()
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "recipe": rec.name,
        "source": str(src),
        "output": str(out),
        "kv_cache": rec.kv_cache,
        "quant_algo": (hfq or {}).get("quantization", {}).get("quant_algo"),
        "quantized_linears": {k: v for k, v in counts.items() if v},
        "tensors_written": written["tensors"],
        "source_bytes": total_bytes,
        "output_bytes": written["bytes"],
        "calibration_tokens": n_calib_tokens,
        "seconds": round(seconds, 3),
        "source_mb_per_s": round(total_bytes / 1e6 / max(seconds, 1e-9), 2),
        "accuracy": None,
    }
    if accuracy:
        from trtllm_nemotron.quant.accuracy import accuracy_report

        summary["accuracy"] = accuracy_report(out, src)
    return summary
