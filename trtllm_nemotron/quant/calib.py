"""Streaming max calibration: activation amax per quantized linear and FP8 KV amax, one layer at a time.

What is collected (ModelOpt `algorithm: max`, spec §5.3): for every linear a recipe quantizes, the running
max of |input| over all calibration tokens (-> `input_scale`), and for every attention layer with an FP8 KV
cache the max of |k_proj(x)| and |v_proj(x)| (-> `k_scale`, `v_scale`; NoPE, so the cached K is k_proj's
output). Like ModelOpt's calibration forward, the network runs unquantized.

Memory: the calibration hidden states [samples, T, hidden] are kept between layers; layer i is built
on the meta device, materialised from the checkpoint (`TensorSource.get`), run over the samples, and
dropped before layer i+1 is read. Peak memory is one layer's weights (in the calibration dtype) plus the
activations, never the whole model. The MTP block and lm_head are never quantized (default exclusions),
so calibration stops after the last backbone layer.

Calibration text: a file, or `DEFAULT_CALIB_TEXT` (mixed prose and code, built in). It is tokenized with
the checkpoint's `tokenizer.json` when there is one, else byte-level (`byte % vocab_size`), then cut into
`samples` windows of `seq_len` tokens (cycling the text when it is short).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.errors import QuantError

DEFAULT_CALIB_TEXT = """\
The quick brown fox jumps over the lazy dog. Large language models are deployed with quantized weights
so that they fit in less memory and run faster: FP8 keeps eight bits per value with one scale per tensor,
while NVFP4 stores four-bit values in blocks of sixteen that share an FP8 scale.
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

The Mamba-2 layer keeps a recurrent state per head; attention layers keep a key-value cache that grows with
the sequence. Mixture-of-experts layers route every token to a few experts chosen by a learned router.
In 1969 the first messages were sent over ARPANET; today billions of devices exchange packets every second.
SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC LIMIT 10;
for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }
Water boils at 100 degrees Celsius at sea level, and the boiling point drops as altitude increases.
{"model": "nemotron", "max_tokens": 128, "temperature": 0.7, "stream": true}
Numbers: 3.14159, 2.71828, 1.41421, 42, -17, 1e-9, 65536, 0xFF, 0b1010.
"""


def load_calib_text(source: str | Path | None) -> str:
    """The calibration text: None -> built-in; a Path (or a str naming an existing file) -> that file's
    text; any other str -> the text itself."""
    if source is None:
        return DEFAULT_CALIB_TEXT
    if isinstance(source, str) and not Path(source).is_file():
        if not source.strip():
            raise QuantError("the calibration text is empty; pass representative text or a text file")
        return source
    p = Path(source)
    if not p.is_file():
        raise QuantError(f"calibration text file {p} does not exist; pass a UTF-8 text file or omit it")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise QuantError(f"calibration text file {p} is empty; pass a file with representative text")
    return text


def tokenize(text: str, tokenizer_dir: str | Path | None, vocab_size: int) -> list[int]:
    """Token ids of `text`: the checkpoint's tokenizer.json if present, else bytes modulo the vocabulary."""
    tok = Path(tokenizer_dir) / "tokenizer.json" if tokenizer_dir is not None else None
    if tok is not None and tok.is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(tok)).encode(text).ids
        ids = [i for i in ids if i < vocab_size]
    else:
        ids = [b % vocab_size for b in text.encode("utf-8")]
    if not ids:
        raise QuantError("the calibration text produced no tokens; pass a non-empty calibration text")
    return ids


def calibration_ids(ids: list[int], samples: int, seq_len: int) -> torch.Tensor:
    """`samples` consecutive windows of `seq_len` tokens, cycling the text: [samples, seq_len] int64."""
    if samples < 1 or seq_len < 2:
        raise QuantError(
            f"calibration needs samples >= 1 and seq_len >= 2, got samples={samples} seq_len={seq_len}"
        )
    need = samples * seq_len
    reps = -(-need // len(ids))
    flat = torch.tensor((ids * reps)[:need], dtype=torch.int64)
    return flat.view(samples, seq_len)


def materialise_layer(
    cfg: NemotronHConfig,
    i: int,
    get: Callable[[str], torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Backbone layer i built on the meta device and filled from `get(name)` (canonical tensor names), in
    `dtype` on `device` (the router's fp32 correction bias stays fp32). Only this layer is in memory."""
    from trtllm_nemotron.model.layers import build_layer

    with torch.device("meta"):
        block = build_layer(cfg, cfg.pattern[i])
    block.to_empty(device=device)
    block.to(dtype)
    prefix = f"backbone.layers.{i}."
    with torch.no_grad():
        for name, t in [*block.named_parameters(), *block.named_buffers()]:
            t.copy_(get(prefix + name).reshape(t.shape))  # one pass: copy_ converts dtype and device
    return block.eval()


class LayerCalibrator:
    """Runs the backbone layer by layer over the calibration batch and records amaxes.

    >>> cal = LayerCalibrator(cfg, ids, get, wanted_inputs, kv_layers)
    >>> for i in range(len(cfg.pattern)): amax = cal.run_layer(i)   # {module: amax}, plus `<k_proj>.k` keys
    """

    def __init__(
        self,
        cfg: NemotronHConfig,
        ids: torch.Tensor,
        get: Callable[[str], torch.Tensor],
        wanted_inputs: set[str],
        kv_modules: set[str],
        *,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 4,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg, self.get, self.dtype, self.batch_size = cfg, get, dtype, batch_size
        self.device = torch.device(device)
        self.wanted_inputs, self.kv_modules = wanted_inputs, kv_modules
        emb = get("backbone.embeddings.weight").to(self.device, dtype)
        self.h = nn.functional.embedding(ids.to(self.device), emb)  # [samples, T, hidden]
        del emb

    def _materialise(self, i: int) -> nn.Module:
        return materialise_layer(self.cfg, i, self.get, self.dtype, self.device)

    @torch.no_grad()
    def run_layer(self, i: int) -> dict[str, float]:
        """Calibrate layer i and advance the hidden states. Returns {module name: amax}; KV amaxes are
        keyed `<...>.k_proj` -> under `<...>.k_proj#out` and `<...>.v_proj#out`."""
        block = self._materialise(i)
        prefix = f"backbone.layers.{i}."
        amax_t: dict[str, torch.Tensor] = {}  # on the device; read back once per layer (no sync per call)
        hooks = []

        def rec(key: str, t: torch.Tensor) -> None:
            m = t.detach().abs().max().float()
            prev = amax_t.get(key)
            amax_t[key] = m if prev is None else torch.maximum(prev, m)

        for name, mod in block.named_modules():
            full = prefix + name
            if not isinstance(mod, nn.Linear):
                continue
            if full in self.wanted_inputs:
                hooks.append(mod.register_forward_pre_hook(lambda m, args, k=full: rec(k, args[0])))
            if full in self.kv_modules:
                hooks.append(mod.register_forward_hook(lambda m, args, out, k=full: rec(k + "#out", out)))
        try:
            outs = []
            for s in range(0, self.h.shape[0], self.batch_size):
                outs.append(block(self.h[s : s + self.batch_size]))
            self.h = torch.cat(outs)
        finally:
            for hk in hooks:
                hk.remove()
        keys = list(amax_t)
        values = torch.stack([amax_t[k] for k in keys]).tolist() if keys else []
        amax: dict[str, float] = dict(zip(keys, values, strict=True))
        # modules that saw no token (an expert the router never chose) keep amax 0: the exporter sanitises it
        for m in self.wanted_inputs:
            if m.startswith(prefix):
                amax.setdefault(m, 0.0)
        for m in self.kv_modules:
            if m.startswith(prefix):
                amax.setdefault(m + "#out", 0.0)
        del block
        return amax
