"""ModelOpt as the format oracle: a real mixed FP8/NVFP4 export of make-tiny validates against our expectations.

The recipe mirrors the Super NVFP4 release (deployment.md §5.4): routed experts NVFP4, shared experts and Mamba
in/out projections FP8, FP8 KV cache, the rest BF16. ModelOpt exports through HF transformers, which drops the
MTP block, so the raw export misses exactly `mtp.*`; copying those (unquantized) makes it complete.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from click.testing import CliRunner

from trtllm_nemotron.checkpoint import open_checkpoint, save_checkpoint, validate
from trtllm_nemotron.checkpoint.validate import format_problems
from trtllm_nemotron.cli import main


@pytest.fixture(scope="module")
def modelopt_export(tiny_dir, tmp_path_factory):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():  # ModelOpt warns about the CPU-only environment
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16)
        cfg = copy.deepcopy(mtq.MAMBA_MOE_NVFP4_CONSERVATIVE_CFG)  # NVFP4 experts, BF16 elsewhere
        fp8 = {"num_bits": (4, 3), "axis": None}
        for pat in ("*mixer.in_proj*", "*mixer.out_proj*", "*shared_experts*"):
            for q in ("weight_quantizer", "input_quantizer"):
                cfg["quant_cfg"].append({"quantizer_name": f"{pat}{q}", "cfg": dict(fp8), "enable": True})
        cfg["quant_cfg"] += copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
        g = torch.Generator().manual_seed(0)
        mtq.quantize(model, cfg, lambda m: m(torch.randint(3, 500, (2, 16), generator=g)))
        out = tmp_path_factory.mktemp("modelopt") / "export"
        export_hf_checkpoint(model, export_dir=out)
    return out


def test_raw_export_misses_only_mtp(modelopt_export):
    with open_checkpoint(modelopt_export) as r:
        q = r.quantization["quantization"]
        assert q["quant_algo"] == "MIXED_PRECISION" and q["kv_cache_quant_algo"] == "FP8"
        assert any("\x00" in k for k in q["quantized_layers"])  # the 0.47 sentinel defect is present ...
        problems = validate(r)  # ... and tolerated
        assert problems and all(p.kind == "missing" and p.name.startswith("mtp.") for p in problems)
        assert "HF transformers drops it" in format_problems(problems)
        assert r.st_dtype("backbone.layers.1.mixer.experts.0.up_proj.weight") == "U8"
        assert r.st_dtype("backbone.layers.0.mixer.in_proj.weight") == "F8_E4M3"
        assert "backbone.layers.3.mixer.k_proj.k_scale" in r


def test_export_plus_mtp_is_complete(modelopt_export, tiny_dir, tmp_path):
    with open_checkpoint(modelopt_export) as q, open_checkpoint(tiny_dir) as src:
        tensors = [(n, q.get(n)) for n in q.names()]
        tensors += [(n, src.get(n)) for n in src.names() if n.startswith("mtp.")]
        extra = {"hf_quant_config.json": (modelopt_export / "hf_quant_config.json").read_text()}
        out = save_checkpoint(
            tmp_path / "full", src.config, tensors, tokenizer_dir=tiny_dir, extra_files=extra
        )
    with open_checkpoint(out) as r:
        assert validate(r) == []
    res = CliRunner().invoke(main, ["inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    p = report["parameters"]
    assert p["files_total"] == p["total"] and p["files_mtp"] == p["mtp"]
    assert report["quantization"]["quantized_linears"] == {"FP8": 12, "NVFP4": 96}
