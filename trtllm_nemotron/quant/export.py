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

Stages (threads, bounded hand-offs, `background`): read (each tensor once, one layer ahead) -> calibrate
layer i -> quantize layer i (while layer i+1 calibrates; NVFP4 rounding in the C++ kernel of
`nvfp4_native`) -> write (this thread). On the CPU every stage runs with one intra-op thread per two cores
(`_stage_threads`): the stages are the parallelism, not OpenMP barriers in thousands of small ops. On a GPU
(`device="cuda"`) the read stage moves each layer to the device and calibration and quantization run there.
`summary["stage_cpu_seconds"]` is the CPU time of each stage thread (the profile of a run).

Memory is bounded by a few layers plus one output shard: source bytes are read with `os.pread` into private
buffers (`TensorSource`) instead of safetensors' mmap, whose touched pages would stay resident for as long
as the file is open and make RSS grow with the checkpoint; the writer flushes every `max_shard_bytes`.
Output is atomic (`checkpoint.save_checkpoint`: temp dir beside OUT, renamed at the end; removed on any
error or Ctrl-C). All input checks run before the first byte is written.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
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
_WRITE_DEPTH = 256  # output tensors queued between the compute thread and the writer (bounds memory)
_STOP_POLL_S = 0.1


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


class background(Iterator[Any]):  # noqa: N801 - used like a function
    """Iterate `items` in a daemon thread, at most `depth` items ahead of the consumer.

    The producer takes a slot before it makes an item and the consumer frees it when it takes the item,
    so at most `depth` items exist beyond the one the consumer holds (queued or being made): with depth 1,
    item k+1 is made while the consumer works on item k, and no further. The producer's exception is
    re-raised in the consumer; `close()` (or the consumer stopping early: an error, Ctrl-C) makes the
    producer stop at its next hand-off and joins it. Torch ops, file reads and the NVFP4 kernel release the
    GIL, so reading, computing and writing overlap.
    """

    def __init__(self, items: Iterable[Any], *, depth: int, name: str) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._items = items
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _slot(self) -> bool:
        while not self._stop.is_set():
            if self._slots.acquire(timeout=_STOP_POLL_S):
                return True
        return False

    def _run(self) -> None:
        it = iter(self._items)
        try:
            while self._slot():
                try:
                    item = next(it)
                except StopIteration:
                    self._q.put(_DONE)
                    return
                self._q.put(item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._q.put(_Failed(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> background:
        return self

    def __next__(self) -> Any:
        if self._stop.is_set():
            raise StopIteration
        item = self._q.get()
        self._slots.release()
        if item is _DONE:
            self._stop.set()
            raise StopIteration
        if isinstance(item, _Failed):
            self._stop.set()
            raise item.exc
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __del__(self) -> None:
        self._stop.set()


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_MMAP_THRESHOLD_BYTES = 64 << 10


def _return_large_frees_to_the_os() -> None:
    """Serve allocations >= 64 KiB by mmap (glibc `mallopt(M_MMAP_THRESHOLD)`), so freed tensors go back to
    the OS. The stage threads each get a malloc arena; with glibc's default sliding threshold (up to 32 MiB)
    the layer-sized buffers they free stay in those arenas and peak RSS grew by ~200 MB on the bench model.
    No-op where glibc is absent."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def _stage_threads() -> int:
    """Intra-op threads per stage on the CPU: the cores split between the calibration and quantization
    stages, which run concurrently. One thread per stage on a small host: OpenMP barriers in the many
    small ops of a layer cost more than they save when a core is busy (measured: 2 threads were 3-4x
    slower than 1 on a loaded 2-core machine; docs/benchmarks.md)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def _units(names: list[str]) -> list[list[str]]:
    """Consecutive tensor names grouped by layer (`backbone.layers.i`, `mtp.layers.k`); others alone."""
    units: list[list[str]] = []
    key_of_last = None
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[:3]) if parts[1:2] == ["layers"] else None
        if key is not None and key == key_of_last:
            units[-1].append(n)
        else:
            units.append([n])
        key_of_last = key
    return units


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

    def get(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """Tensor `name` as stored (a private copy), moved to `device`."""
        t = self._read(name)
        return t if torch.device(device).type == "cpu" else t.to(device, non_blocking=False)

    def _read(self, name: str) -> torch.Tensor:
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


def resolve_device(device: str | None) -> str:
    """None -> "cuda" when a CUDA device is visible, else "cpu"; an unusable choice -> QuantError."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise QuantError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QuantError(f"--device {device} asked for CUDA but no CUDA device is visible; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise QuantError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible; pick one of them"
        )
    if dev.type not in ("cpu", "cuda"):
        raise QuantError(f"--device {device}: quantization runs on cpu or cuda, not {dev.type}")
    return str(dev)


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
    device: str | None = None,
) -> dict[str, Any]:
    """Quantize checkpoint `src` with `recipe` into `out` (ModelOpt HF layout). Returns a summary dict.

    calib_text: a text file (Path, or str naming a file), the text itself (other str), or None (built-in);
    calib_samples x calib_seq_len tokens of it run through the network, layer by layer. accuracy: also run
    `accuracy_report(out, src)`, which writes `out/accuracy.json` (the summary's "accuracy" key).
    max_shard_bytes: output shard cap; peak memory is about one layer plus one shard.
    device: where calibration and quantization run ("cpu", "cuda", "cuda:N"); None -> cuda when available.
    Layer-streamed: the device holds about two layers (the one computing and the next one read) plus the
    calibration activations. Weights quantize to the same bytes on any device (elementwise fp32
    operations); calibrated activation scales can differ in the last bits (GEMM summation order).
    Raises QuantError / CheckpointError (bad recipe, source, shapes or output path) before writing anything.
    """
    rec = get_recipe(recipe)
    device = resolve_device(device)
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

        def emit(name: str, t: torch.Tensor) -> tuple[str, torch.Tensor]:
            written["tensors"] += 1
            written["bytes"] += t.numel() * t.element_size()
            return name, t

        units = _units(names)
        cpu_s = {"read": 0.0, "calibrate": 0.0, "quantize": 0.0, "write": 0.0}  # CPU seconds per stage thread

        def timed(items: Iterable[Any], stage: str) -> Iterator[Any]:
            """`items`, with the CPU time of the thread that iterates it added to `cpu_s[stage]`."""
            t0 = time.thread_time()
            try:
                yield from items
            finally:
                cpu_s[stage] += time.thread_time() - t0

        def calibrated() -> Iterator[tuple[list[str], dict[str, torch.Tensor], dict[str, float]]]:
            """Stage 2 (thread): each unit's tensors (read one unit ahead by stage 1) and its amaxes."""
            current: dict[str, torch.Tensor] = {}

            def get(name: str) -> torch.Tensor:  # calibration reads the unit already in memory
                return current[name] if name in current else source.get(name, device)

            cal: LayerCalibrator | None = None
            if ids is not None:
                cal = LayerCalibrator(
                    cfg, ids, get, set(quantized), kv_modules, dtype=calib_dtype, device=device
                )
            reads = background(
                timed(({n: source.get(n, device) for n in unit} for unit in units), "read"),
                depth=1,
                name="quantize-read",
            )
            try:
                for unit, loaded in zip(units, reads, strict=True):
                    current = loaded
                    layer = _layer_of(unit[0])
                    amax = cal.run_layer(layer) if cal is not None and layer is not None else {}
                    yield unit, loaded, amax
                    current = {}
            finally:
                reads.close()

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            """Stage 3 (thread): quantize unit i while stage 2 calibrates unit i+1; the writer takes these."""
            from tqdm import tqdm

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
            stage2 = background(timed(calibrated(), "calibrate"), depth=1, name="quantize-calibrate")
            try:
                for unit, loaded, amax in stage2:
                    for name in unit:
                        for out_name, t in _convert(name, loaded.pop(name), amax):
                            yield emit(out_name, t.cpu())
                        bar.update(reader.nbytes(name))
            finally:
                stage2.close()
                bar.close()

        def _convert(
            name: str, w: torch.Tensor, amax: dict[str, float]
        ) -> Iterator[tuple[str, torch.Tensor]]:
            module = name.removesuffix(".weight")
            fmt = quantized.get(module) if name.endswith(".weight") else None
            if fmt == FP8:
                q, s = fp8.quantize(w)
                counts[FP8] += 1
                yield name, q
                yield f"{module}.{WEIGHT_SCALE}", s
                yield f"{module}.{INPUT_SCALE}", fp8.scale_from_amax(amax.get(module, 0.0))
            elif fmt == NVFP4:
                p, s, s2 = nvfp4.quantize(w)
                counts[NVFP4] += 1
                yield name, p
                yield f"{module}.{WEIGHT_SCALE}", s
                yield f"{module}.{WEIGHT_SCALE_2}", s2
                yield f"{module}.{INPUT_SCALE}", nvfp4.global_scale_from_amax(amax.get(module, 0.0))
            else:
                keep = expected[name].dtype == "float32" or not w.is_floating_point()
                yield name, w if keep else w.to(torch.bfloat16)
            if module in kv_modules:
                kind = K_SCALE if module.endswith("k_proj") else V_SCALE
                yield f"{module}.{kind}", fp8.scale_from_amax(amax.get(module + "#out", 0.0))

        meta = {"format": "pt", "producer": f"trtllm-nemotron (recipe {rec.name}, ModelOpt 0.47 HF format)"}
        _return_large_frees_to_the_os()
        threads_before = torch.get_num_threads()
        if device == "cpu":  # parallelism comes from the stages (see _stage_threads)
            torch.set_num_threads(_stage_threads())
        stream = None
        try:
            # this thread writes while the stage threads read, calibrate and quantize
            stream = background(timed(tensors(), "quantize"), depth=_WRITE_DEPTH, name="quantize-compute")
            t_write = time.thread_time()
            save_checkpoint(
                out,
                out_cfg,
                stream,
                tokenizer_dir=tokenizer_dir,
                max_shard_bytes=max_shard_bytes,
                metadata=meta,
                extra_files=extra,
            )
            cpu_s["write"] = time.thread_time() - t_write
        except NemotronError:
            raise
        except OSError as e:
            raise QuantError(
                f"could not write the quantized checkpoint to {out} ({type(e).__name__}: {e}); check that "
                f"{out.absolute().parent} is writable and has free space (the source holds "
                f"{total_bytes / 2**30:.2f} GiB; the output is smaller). Nothing was left behind"
            ) from e
        finally:
            if stream is not None:
                stream.close()
            torch.set_num_threads(threads_before)
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
        "device": device,
        "stage_cpu_seconds": {k: round(v, 3) for k, v in cpu_s.items()},  # per stage thread (profile)
        "accuracy": None,
    }
    if accuracy:
        from trtllm_nemotron.quant.accuracy import accuracy_report

        summary["accuracy"] = accuracy_report(out, src)
    return summary
