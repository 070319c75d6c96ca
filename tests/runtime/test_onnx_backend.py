"""The `onnx` backend on the embedded model: the exported graphs run on CPU (onnx.reference with our ops as
OpRuns, and onnxruntime with them as extensions custom ops) decode greedily to the native step's tokens,
with and without MTP; a rejected draft rolls the Mamba state back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from trtllm_nemotron.errors import RuntimeStateError

PROMPT = [5, 17, 300, 42, 7, 99]
N = 8


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    from builder.defaults import default_model_dir
    from builder.onnx_export import check_onnx, export_onnx

    out = tmp_path_factory.mktemp("embedded") / "onnx"
    export_onnx(default_model_dir(), out)
    counts = check_onnx(out)
    assert counts["model"]["mamba_state_update"] == 3 and counts["model"]["latent_moe_routing"] == 3
    return out


@pytest.fixture(scope="module")
def native_tokens():
    from builder.defaults import default_model_dir
    from trtllm_nemotron.runtime import Engine, SamplingParams

    eng = Engine.load(default_model_dir(), mtp=0, max_batch_size=1, max_seq_len=64, backend="native")
    return eng.generate(PROMPT, SamplingParams(max_tokens=N, ignore_eos=True)).token_ids


@pytest.mark.parametrize("runner", ["reference", "onnxruntime"])
@pytest.mark.parametrize("mtp", [0, 3])
def test_greedy_equals_the_native_step(onnx_dir, native_tokens, runner, mtp):
    from trtllm_nemotron.runtime.onnx_backend import OnnxNetwork, greedy_generate

    net = OnnxNetwork(onnx_dir, pool=2, max_seq_len=64, runner=runner)
    assert net.runner == runner
    assert greedy_generate(net, PROMPT, N, mtp=mtp, slot=1) == native_tokens


def test_rejected_drafts_roll_the_state_back(onnx_dir, native_tokens):
    """Verify with drafts that are all wrong: only the first target token is kept, and the next decode step
    continues exactly as plain decoding (the snapshot / re-run restored the Mamba state)."""
    from trtllm_nemotron.runtime.onnx_backend import OnnxNetwork, verify_greedy

    net = OnnxNetwork(onnx_dir, pool=3, max_seq_len=64, runner="reference")
    n = len(PROMPT)
    net.forward([PROMPT, PROMPT], [0, 0], [0, 2])  # two rows of one batch, different slots
    first = native_tokens[0]
    wrong = [(native_tokens[1] + 1) % 4096, 0, 0]
    right = native_tokens[1:4]
    y, acc, _ = verify_greedy(net, [[first] + wrong, [first] + right], [n, n], [0, 2], 3)
    assert acc == [0, 3] and y[0][0] == native_tokens[1] and y[1][:4] == native_tokens[1:5]
    logits, _ = net.forward([[native_tokens[1]]], [n + 1], [0])  # row 0 continues after one kept token
    assert int(logits[0, -1].argmax()) == native_tokens[2]
    logits, _ = net.forward([[native_tokens[4]]], [n + 4], [2])
    assert int(logits[0, -1].argmax()) == native_tokens[5]


def test_bad_use_is_refused(onnx_dir, tmp_path):
    from trtllm_nemotron.runtime.onnx_backend import OnnxNetwork

    with pytest.raises(RuntimeStateError, match="no io.json"):
        OnnxNetwork(tmp_path, pool=1, max_seq_len=8)
    with pytest.raises(RuntimeStateError, match="runner must be one of"):
        OnnxNetwork(onnx_dir, pool=1, max_seq_len=8, runner="tvm")
    net = OnnxNetwork(onnx_dir, pool=1, max_seq_len=8, runner="reference")
    with pytest.raises(RuntimeStateError, match="ONNX state pools hold 8"):
        net.forward([list(range(9))], [0], [0])
    with pytest.raises(RuntimeStateError, match="out of range"):
        net.forward([[1]], [0], [1])
    assert all(not np.any(v) for v in net.backbone.state.values())  # nothing ran
