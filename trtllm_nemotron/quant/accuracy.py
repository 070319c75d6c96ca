"""Accuracy of a quantized checkpoint against its source, on held-out text (CPU, float32).

Both checkpoints run as the reference network (the quantized one dequantized, with simulated activation
quantization: FP8 / NVFP4 linear inputs and the FP8 KV cache rounded as the engine rounds them), streamed
layer by layer (`streamed_logits`): the hidden states of both models on the held-out windows are kept, one
layer of each is materialised at a time and dropped, then the final norm and the LM head give the logits.
Memory is one layer of each model plus the activations, whatever the model size, and the sample is bounded
(`HELDOUT_TEXTS`, at most `max_len` tokens each), so the report costs one read of each checkpoint. On the
same token windows:
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
    return compare_logits([ref(ids)[0] for ids in windows], [test(ids)[0] for ids in windows], windows)


def compare_logits(
    ref_logits: list[torch.Tensor], test_logits: list[torch.Tensor], windows: list[torch.Tensor]
) -> dict[str, float]:
    """KL / top-1 / perplexity from per-window logits [T, vocab] of the reference and the test model."""
    kls, agree, nll_ref, nll_test, n = [], 0, 0.0, 0.0, 0
    for ids, ref_l, test_l in zip(windows, ref_logits, test_logits, strict=True):
        lp = torch.log_softmax(ref_l.double(), -1)  # [T, vocab]
        lq = torch.log_softmax(test_l.double(), -1)
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


class _Side:
    """One checkpoint streamed layer by layer: canonical tensors (dequantized when stored quantized)."""

    def __init__(self, reader: Any, simulate: bool) -> None:
        from trtllm_nemotron.config import expected_tensors

        self.reader, self.simulate = reader, simulate and reader.quantization is not None
        self.fp32 = {n for n, spec in expected_tensors(reader.config).items() if spec.dtype == "float32"}

    def get(self, name: str) -> torch.Tensor:
        from trtllm_nemotron.checkpoint.dequant import dequantize_weight

        if name.endswith(".weight"):
            return dequantize_weight(self.reader, name, torch.float32)
        t = self.reader.get(name)
        return t.float() if t.is_floating_point() else t

    def layer(self, i: int) -> torch.nn.Module:
        from trtllm_nemotron.quant.calib import materialise_layer
        from trtllm_nemotron.quant.loading import apply_activation_quant

        block = materialise_layer(self.reader.config, i, self.get, torch.float32)
        if self.simulate:
            apply_activation_quant(block, self.reader, prefix=f"backbone.layers.{i}.")
        return block

    def head(self, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        from trtllm_nemotron.model.norms import RMSNorm

        cfg = self.reader.config
        norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_epsilon)
        with torch.no_grad():
            norm.weight.copy_(self.get("backbone.norm_f.weight"))
        w = self.get("lm_head.weight" if "lm_head.weight" in self.reader else "backbone.embeddings.weight")
        return [torch.nn.functional.linear(norm(h), w).float()[0] for h in hs]


@torch.no_grad()
def streamed_logits(
    source_reader: Any, quant_reader: Any, windows: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-window logits [T, vocab] of the source and the quantized model, one layer of each in memory."""
    sides = (_Side(source_reader, False), _Side(quant_reader, True))
    hidden = []
    for side in sides:
        emb = side.get("backbone.embeddings.weight")
        hidden.append([torch.nn.functional.embedding(ids, emb) for ids in windows])
        del emb
    for i in range(len(source_reader.config.pattern)):
        for side, hs in zip(sides, hidden, strict=True):
            block = side.layer(i)
            hs[:] = [block(h) for h in hs]
            del block
    ref, test = (side.head(hs) for side, hs in zip(sides, hidden, strict=True))
    return ref, test


def accuracy_report(
    quant_dir: str | Path, source_dir: str | Path, texts: list[str] | None = None, *, max_len: int = 256
) -> dict[str, Any]:
    """Compare `quant_dir` with `source_dir`; write `quant_dir/accuracy.json`; return the report."""
    from trtllm_nemotron.checkpoint import check_checkpoint, open_checkpoint

    quant_dir, source_dir = Path(quant_dir), Path(source_dir)
    with open_checkpoint(source_dir) as src, open_checkpoint(quant_dir) as q:
        check_checkpoint(src)
        check_checkpoint(q)
        if src.config.vocab_size != q.config.vocab_size or src.config.pattern != q.config.pattern:
            raise QuantError(
                f"{quant_dir} and {source_dir} are different models (pattern {q.config.pattern!r} vs "
                f"{src.config.pattern!r}); pass the checkpoint the quantized one was made from"
            )
        windows = _windows(
            list(texts) if texts is not None else list(HELDOUT_TEXTS),
            source_dir,
            src.config.vocab_size,
            max_len,
        )
        ref_logits, test_logits = streamed_logits(src, q, windows)
        qcfg = (q.config.raw or {}).get("quantization_config") or {}
    report: dict[str, Any] = compare_logits(ref_logits, test_logits, windows)
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
