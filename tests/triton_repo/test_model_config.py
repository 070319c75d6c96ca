"""config.pbtxt generation: dataclasses -> text -> Triton's ModelConfig protobuf, and the llmapi tables."""

from __future__ import annotations

import pytest

from triton_repo.model_config import (
    InstanceGroup,
    ModelConfigSpec,
    TensorSpec,
    parse_pbtxt,
    render_pbtxt,
    validate_pbtxt,
)
from triton_repo.package import nemotron_spec, trtllm_spec
from triton_repo.protocol import (
    INFLIGHT_ALIASES,
    LLMAPI_INPUTS,
    LLMAPI_OUTPUTS,
    NEMOTRON_INPUTS,
    NEMOTRON_OUTPUTS,
)
from trtllm_nemotron.errors import PackageError


def _spec(**kw) -> ModelConfigSpec:
    base = dict(
        name="m",
        inputs=(TensorSpec("x", "TYPE_STRING", (-1,)), TensorSpec("n", "TYPE_INT32", (1,), optional=True)),
        outputs=(TensorSpec("y", "TYPE_FP32", (-1, 4)),),
        decoupled=True,
        instance_groups=(InstanceGroup(2, "KIND_CPU"),),
        parameters=(("engine_dir", 'a "quoted" \\ path'),),
    )
    base.update(kw)
    return ModelConfigSpec(**base)


def test_render_round_trips_through_model_config():
    spec = _spec()
    text = render_pbtxt(spec)
    validate_pbtxt(spec, text)
    pb = parse_pbtxt(text)
    assert pb.model_transaction_policy.decoupled is True
    assert [i.name for i in pb.input] == ["x", "n"] and pb.input[1].optional and not pb.input[0].optional
    assert list(pb.output[0].dims) == [-1, 4]
    assert pb.parameters["engine_dir"].string_value == 'a "quoted" \\ path'
    assert pb.instance_group[0].count == 2


def test_unset_batching_fields_are_left_out():
    text = render_pbtxt(_spec(max_batch_size=None, decoupled=None))
    assert "max_batch_size" not in text and "model_transaction_policy" not in text


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda t: t.replace("data_type", "datatype", 1), "does not parse"),
        (lambda t: t.replace("TYPE_FP32", "TYPE_FLOAT32"), "does not parse"),
        (lambda t: t.replace('name: "y"', 'name: "z"'), "outputs"),
        (lambda t: t.replace("decoupled: true", "decoupled: false"), "decoupled"),
    ],
)
def test_validation_catches_edits(corrupt, match):
    spec = _spec()
    with pytest.raises(PackageError, match=match):
        validate_pbtxt(spec, corrupt(render_pbtxt(spec)))


def test_bad_specs_are_refused():
    with pytest.raises(PackageError, match="unknown Triton dtype"):
        TensorSpec("x", "TYPE_FLOAT", (1,))
    with pytest.raises(PackageError, match="dims"):
        TensorSpec("x", "TYPE_FP32", (0,))
    with pytest.raises(PackageError, match="used twice"):
        _spec(outputs=(TensorSpec("x", "TYPE_FP32", (1,)),))


def test_llmapi_tables_match_tensorrt_llm():
    # TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt (spec deployment.md §7.2)
    ins = {t.name: (t.dtype, t.dims, t.optional) for t in LLMAPI_INPUTS}
    assert ins["text_input"] == ("TYPE_STRING", (-1,), False)
    assert ins["streaming"] == ("TYPE_BOOL", (1,), True)
    assert ins["sampling_param_max_tokens"][0] == ins["sampling_param_top_k"][0] == "TYPE_INT32"
    assert ins["sampling_param_temperature"][0] == ins["sampling_param_top_p"][0] == "TYPE_FP32"
    assert ins["sampling_param_seed"][0] == "TYPE_UINT64" and ins["sampling_param_stop"][:2] == (
        "TYPE_STRING",
        (-1,),
    )
    outs = {t.name: (t.dtype, t.dims) for t in LLMAPI_OUTPUTS}
    assert outs["text_output"] == outs["finish_reason"] == ("TYPE_STRING", (-1,))
    assert outs["acceptance_rate"] == ("TYPE_FP32", (1,))
    assert outs["total_accepted_draft_tokens"] == outs["total_draft_tokens"] == ("TYPE_INT32", (1,))
    assert all(
        outs[f"{k}_time_ns"] == ("TYPE_INT64", (1,))
        for k in ("arrival", "first_scheduled", "first_token", "last_token")
    )


def test_nemotron_protocol_is_the_llmapi_protocol_plus_optional_extensions():
    llm_in = {t.name: t for t in LLMAPI_INPUTS}
    llm_out = {t.name: t for t in LLMAPI_OUTPUTS}
    extra_in = [t for t in NEMOTRON_INPUTS if t.name not in llm_in]
    assert [t.name for t in extra_in] == [
        "sampling_param_ignore_eos",
        *INFLIGHT_ALIASES,
        "return_num_input_tokens",
        "return_num_output_tokens",
    ]
    assert all(t.optional for t in extra_in)
    assert all(t == llm_in[t.name] for t in NEMOTRON_INPUTS if t.name in llm_in)
    assert all(t == llm_out[t.name] for t in NEMOTRON_OUTPUTS if t.name in llm_out)
    assert [t.name for t in NEMOTRON_OUTPUTS if t.name not in llm_out] == [
        "num_output_tokens",
        "num_input_tokens",
    ]
    for name in (
        "text_input",
        "streaming",
        "sampling_param_max_tokens",
        "sampling_param_stop",
        "text_output",
        "finish_reason",
        "acceptance_rate",
        "total_accepted_draft_tokens",
        "total_draft_tokens",
        "first_token_time_ns",
    ):
        assert name in llm_in or name in llm_out
        assert name in {t.name for t in NEMOTRON_INPUTS + NEMOTRON_OUTPUTS}


def test_generated_model_configs_validate():
    from triton_repo.package import PackageConfig

    n = nemotron_spec("/x/engine", PackageConfig(max_batch_size=4))
    validate_pbtxt(n, render_pbtxt(n))
    pb = parse_pbtxt(render_pbtxt(n))
    assert pb.max_batch_size == 0 and pb.model_transaction_policy.decoupled and pb.backend == "python"
    assert pb.parameters["max_batch_size"].string_value == "4"
    t = trtllm_spec()
    text = render_pbtxt(t)
    validate_pbtxt(t, text)
    # the llmapi model sets these from model.yaml in auto_complete_config; its config must not
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "max_batch_size" not in body and "decoupled" not in body
