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


@pytest.mark.parametrize("variant", ["tiny", "dense-biases-tied"])
def test_onnx_backend_keeps_the_step_backend_contract(variant):
    """The protocol test every step backend passes (tests/runtime/test_backends.py), on the `onnx` backend: prefill,
    decode, verify + commit, MTP and the greedy MTP iteration against the uncached reference network, the
    committed caches (the slot pool's, which the graphs update in place) equal to a prefill of the kept tokens.
    The second variant has the dense MLP, biases, tied embeddings, no latent projection and the dt clamp."""
    from tests.runtime.test_backends import test_protocol_matches_the_uncached_network

    test_protocol_matches_the_uncached_network("onnx", variant)


def test_engine_and_cli_run_the_onnx_backend(tmp_path, native_tokens):
    """Engine.load(..., backend="onnx") on a cpu-target engine dir runs its onnx/ graphs and decodes like the
    native step, with MTP; `generate --backend onnx` prints what `--backend native` prints."""
    import json

    from click.testing import CliRunner

    from builder.defaults import default_model_dir
    from builder.pipeline import build_engine
    from trtllm_nemotron.cli import main
    from trtllm_nemotron.runtime import Engine, SamplingParams

    out = build_engine(
        default_model_dir(), tmp_path / "e", target="cpu", recipe="bf16", mtp=3, onnx=True, progress=False
    )
    eng = Engine.load(out, max_batch_size=2, max_seq_len=64, backend="onnx")
    assert eng.backend == "onnx" and eng.step.onnx_dir == out / "onnx" and eng.mtp == 3
    c = eng.generate(PROMPT, SamplingParams(max_tokens=N, ignore_eos=True))
    assert c.token_ids == native_tokens and c.stats["backend"] == "onnx"
    texts = {}
    for backend in ("onnx", "native"):
        r = CliRunner().invoke(
            main,
            [
                "generate",
                "--model",
                str(out),
                "--backend",
                backend,
                "--max-tokens",
                "4",
                "--max-seq-len",
                "64",
                "--json",
                "def f(x):",
            ],
        )
        assert r.exit_code == 0, r.output
        texts[backend] = json.loads(r.output)["text"]
    assert texts["onnx"] == texts["native"] and texts["onnx"]


def test_tensorrt_backend_says_why_it_cannot_run():
    """The `tensorrt` backend (TensorRT engines of `build --trt`) refuses clearly where it cannot run."""
    from builder.defaults import default_model_dir
    from trtllm_nemotron.runtime import Engine
    from trtllm_nemotron.runtime.backend import backend_names

    assert {"onnx", "tensorrt"} <= set(backend_names())
    try:
        import tensorrt  # noqa: F401

        want = "CUDA device|not loaded from an engine dir"
    except Exception:
        want = "tensorrt does not import here"
    with pytest.raises(RuntimeStateError, match=f"backend='tensorrt' cannot run here: .*({want})"):
        Engine.load(default_model_dir(), max_batch_size=1, max_seq_len=32, backend="tensorrt")
