"""`trtllm-nemotron quantize` and `accuracy` through click (in process)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.quant.test_export import SHORT_TEXT
from trtllm_nemotron.cli import main


def test_list_recipes():
    res = CliRunner().invoke(main, ["quantize", "--list-recipes"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split()[0] for ln in lines] == ["fp8", "nvfp4", "nvfp4-super", "bf16"]
    assert "MIXED_PRECISION" in res.output


def test_quantize_cli_errors(tmp_path, tiny_src):
    res = CliRunner().invoke(main, ["quantize", str(tiny_src), str(tmp_path / "o"), "--recipe", "int3"])
    assert res.exit_code == 1 and "unknown recipe 'int3'" in res.output
    res = CliRunner().invoke(main, ["quantize", str(tiny_src)])
    assert res.exit_code == 2 and "SRC and OUT are required" in res.output
    assert not (tmp_path / "o").exists()


def test_quantize_and_accuracy_cli(tmp_path, tiny_src):
    calib = tmp_path / "calib.txt"
    calib.write_text("Some calibration text with code: x = [i * i for i in range(10)]\n" * 4)
    out = tmp_path / "q"
    res = CliRunner().invoke(
        main,
        [
            "quantize",
            str(tiny_src),
            str(out),
            "--recipe",
            "nvfp4-super",
            "--calib-text",
            str(calib),
            "--calib-samples",
            "2",
            "--calib-seq-len",
            "16",
            "--no-accuracy",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["quant_algo"] == "MIXED_PRECISION" and summary["quantized_linears"]["NVFP4"] == 3 * 4 * 2
    assert summary["calibration_tokens"] == 32 and summary["source_mb_per_s"] > 0
    text = tmp_path / "heldout.txt"
    text.write_text(SHORT_TEXT)
    res = CliRunner().invoke(main, ["accuracy", str(out), "--source", str(tiny_src), "--text", str(text)])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["kl_mean"] < 5e-4 and (out / "accuracy.json").is_file()


def test_quantize_device_option(tmp_path, tiny_src):
    import torch

    args = [
        "quantize",
        str(tiny_src),
        str(tmp_path / "o"),
        "--no-accuracy",
        "--no-progress",
        "--calib-samples",
        "1",
    ]
    res = CliRunner().invoke(main, [*args, "--device", "tpu"])
    assert (
        res.exit_code == 1
        and "is not a device name" in res.output
        and "use cpu, cuda or cuda:N" in res.output
    )
    res = CliRunner().invoke(main, [*args, "--device", "meta"])
    assert res.exit_code == 1 and "quantization runs on cpu or cuda, not meta" in res.output
    if not torch.cuda.is_available():
        res = CliRunner().invoke(main, [*args, "--device", "cuda"])
        assert res.exit_code == 1 and "no CUDA device is visible; use --device cpu" in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(main, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["device"] == "cpu"
