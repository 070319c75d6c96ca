"""The engine serves FP8 and NVFP4 (ModelOpt-format) checkpoints: weights are dequantized at load."""

from __future__ import annotations

import pytest
import torch

from trtllm_nemotron.runtime import Engine, SamplingParams


@pytest.mark.parametrize("recipe", ["fp8", "nvfp4"])
def test_quantized_checkpoint_generates_like_its_dequantized_network(tiny_dir, tmp_path, recipe):
    from trtllm_nemotron.quant import quantize_checkpoint

    out = tmp_path / recipe
    quantize_checkpoint(
        tiny_dir, out, recipe=recipe, calib_samples=2, calib_seq_len=16, progress=False, accuracy=False
    )
    eng = Engine.load(out, mtp=2, max_batch_size=2, max_seq_len=64)
    c = eng.generate("def f(x):", SamplingParams(max_tokens=8, ignore_eos=True))
    ids = eng.tokenizer.encode("def f(x):")
    seq = list(ids)
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(eng.model(torch.tensor([seq]))[0, -1].argmax()))
    assert c.token_ids == seq[len(ids) :]
