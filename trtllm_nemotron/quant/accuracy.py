"""Accuracy of a quantized checkpoint against its source, on held-out text (CPU, float32).

Both checkpoints are loaded as the reference network (`load_model`; the quantized one dequantized, with
simulated activation quantization, `quant.loading.load_model_as_deployed`: FP8 / NVFP4 linear inputs and the FP8 KV cache rounded as the engine
rounds them). On the same token windows:
    kl_mean / kl_max   KL(P_source || P_quant) of the next-token distributions, mean and max over positions
    top1_agreement     fraction of positions where both argmax tokens agree
    ppl_source / ppl_quant / ppl_delta   perplexity of the text under each model, and quant - source
The held-out text is built in (`HELDOUT_TEXTS`) and distinct from the calibration text. The report is
written to `<quant_dir>/accuracy.json` (atomically) and returned.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from trtllm_nemotron.errors import QuantError
from trtllm_nemotron.fileio import atomic_write_text

ACCURACY_FILE = "accuracy.json"
HELDOUT_TEXTS = (
    "A library is a collection of books and other media that people can borrow, read and study. Many "
    "cities keep a central library and several smaller branches in their neighbourhoods.",
    "def merge_sorted(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n"
    "            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]\n",
    "The train left the station at seven in the morning and reached the coast before noon, where the "
    "passengers walked along the harbour and watched the fishing boats come in.",
    "import json\nwith open('config.json') as f:\n    cfg = json.load(f)\nprint(cfg['hidden_size'] * 2)\n",
)


def _windows(texts: list[str], tokenizer_dir: Path, vocab: int, max_len: int) -> list[torch.Tensor]:
    from trtllm_nemotron.quant.calib import tokenize

    out = []
    for t in texts:
        ids = tokenize(t, tokenizer_dir, vocab)[:max_len]
        if len(ids) >= 2:
            out.append(torch.tensor([ids], dtype=torch.int64))
    if not out:
        raise QuantError("accuracy needs held-out texts of at least 2 tokens; pass longer texts")
    return out


@torch.no_grad()
def compare_models(
    ref: torch.nn.Module, test: torch.nn.Module, windows: list[torch.Tensor]
) -> dict[str, float]:
    """KL / top-1 / perplexity of `test` against `ref` on token windows [1, T]."""
    kls, agree, nll_ref, nll_test, n = [], 0, 0.0, 0.0, 0
    for ids in windows:
        lp = torch.log_softmax(ref(ids)[0].double(), -1)  # [T, vocab]
        lq = torch.log_softmax(test(ids)[0].double(), -1)
        kls.append((lp.exp() * (lp - lq)).sum(-1))  # [T]
        agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())
        tgt = ids[0, 1:]
        nll_ref -= float(lp[:-1].gather(1, tgt[:, None]).sum())
        nll_test -= float(lq[:-1].gather(1, tgt[:, None]).sum())
        n += tgt.numel()
    kl = torch.cat(kls).clamp(min=0.0)
    positions = kl.numel()
    ppl_ref, ppl_test = math.exp(nll_ref / n), math.exp(nll_test / n)
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement": agree / positions,
        "ppl_source": ppl_ref,
        "ppl_quant": ppl_test,
        "ppl_delta": ppl_test - ppl_ref,
        "positions": positions,
    }


def accuracy_report(
    quant_dir: str | Path, source_dir: str | Path, texts: list[str] | None = None, *, max_len: int = 256
) -> dict[str, Any]:
    """Compare `quant_dir` with `source_dir`; write `quant_dir/accuracy.json`; return the report."""
    from trtllm_nemotron import load_model
    from trtllm_nemotron.quant.loading import load_model_as_deployed

    quant_dir, source_dir = Path(quant_dir), Path(source_dir)
    ref = load_model(source_dir, dtype=torch.float32, progress=False)
    test = load_model_as_deployed(quant_dir, dtype=torch.float32, progress=False)
    if ref.config.vocab_size != test.config.vocab_size or ref.config.pattern != test.config.pattern:
        raise QuantError(
            f"{quant_dir} and {source_dir} are different models (pattern {test.config.pattern!r} vs "
            f"{ref.config.pattern!r}); pass the checkpoint the quantized one was made from"
        )
    windows = _windows(
        list(texts) if texts is not None else list(HELDOUT_TEXTS), source_dir, ref.config.vocab_size, max_len
    )
    report: dict[str, Any] = compare_models(ref, test, windows)
    qcfg = (test.config.raw or {}).get("quantization_config") or {}
    report.update(
        {
            "quant_dir": str(quant_dir),
            "source_dir": str(source_dir),
            "quant_algo": qcfg.get("quant_algo"),
            "texts": len(windows),
        }
    )
    try:
        atomic_write_text(quant_dir / ACCURACY_FILE, json.dumps(report, indent=2) + "\n")
    except OSError as e:
        raise QuantError(
            f"could not write {quant_dir / ACCURACY_FILE} ({e}); check the directory is writable"
        ) from e
    return report
