"""Request parsing and response tensors of the llmapi protocol (pure numpy, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from triton_repo.protocol import RequestError, parse_request, response_arrays


def _get(d):
    return lambda name: d.get(name)


def test_parse_full_request():
    req = parse_request(
        _get(
            {
                "text_input": np.array([b"h\xc3\xa9llo"], dtype=object),
                "streaming": np.array([True]),
                "sampling_param_max_tokens": np.array([7], np.int32),
                "sampling_param_temperature": np.array([0.5], np.float32),
                "sampling_param_top_k": np.array([3], np.int32),
                "sampling_param_top_p": np.array([0.9], np.float32),
                "sampling_param_seed": np.array([42], np.uint64),
                "sampling_param_stop": np.array([b"\n\n", b"", b"END"], dtype=object),
                "sampling_param_exclude_input_from_output": np.array([True]),
                "return_finish_reason": np.array([True]),
            }
        )
    )
    assert req.prompt == "héllo" and req.streaming and req.exclude_input and req.return_finish_reason
    assert req.sampling == {
        "max_tokens": 7,
        "temperature": pytest.approx(0.5),
        "top_k": 3,
        "top_p": pytest.approx(0.9),
        "seed": 42,
        "stop": ("\n\n", "END"),
    }
    assert type(req.sampling["max_tokens"]) is int and not req.return_perf_metrics


def test_defaults_follow_llmapi():
    req = parse_request(_get({"text_input": np.array(["hi"], dtype=object)}))
    # TensorRT-LLM: SamplingParams.exclude_input_from_output defaults to true (the prompt is not echoed)
    assert req.sampling == {} and not req.streaming and req.exclude_input and not req.stop_request


@pytest.mark.parametrize(
    "tensors, match",
    [
        ({}, "text_input' is missing"),
        ({"text_input": np.array([[b"a"]], dtype=object)}, "1-D"),
        (
            {"text_input": np.array([b"a", b"b"], dtype=object)},
            "one request per prompt",
        ),  # was: "b" dropped silently
        ({"text_input": np.array([b"\xff\xfeab"], dtype=object)}, "not valid UTF-8"),
        (
            {
                "text_input": np.array([b"a"], dtype=object),
                "sampling_param_stop": np.array([b"\xc3"], dtype=object),
            },
            "sampling_param_stop' is not valid UTF-8",
        ),
        (
            {
                "text_input": np.array([b"a"], dtype=object),
                "sampling_param_max_tokens": np.array([1, 2], np.int32),
            },
            "one value",
        ),
    ],
)
def test_bad_requests(tensors, match):
    with pytest.raises(RequestError, match=match):
        parse_request(_get(tensors))


def test_stop_request_needs_no_prompt():
    assert parse_request(_get({"stop": np.array([True])})).stop_request


def test_response_honours_return_flags():
    req = parse_request(_get({"text_input": np.array([b"Q:"], dtype=object)}))
    a = response_arrays(
        req,
        text=" A",
        num_tokens=2,
        finish_reason="stop",
        stop_reason=None,
        stats=None,
        times_ns={},
        num_input_tokens=3,
    )
    assert a["text_output"][0] == b" A"  # TensorRT-LLM's default: the generated text only
    assert set(a) == {"text_output", "num_output_tokens"}
    echo = parse_request(
        _get(
            {
                "text_input": np.array([b"Q:"], dtype=object),
                "sampling_param_exclude_input_from_output": np.array([False]),
            }
        )
    )
    a = response_arrays(
        echo, text=" A", num_tokens=2, finish_reason="stop", stop_reason=None, stats=None, times_ns={}
    )
    assert a["text_output"][0] == b"Q: A"
    req = parse_request(
        _get(
            {
                "text_input": np.array([b"Q:"], dtype=object),
                "return_finish_reason": np.array([True]),
                "sampling_param_exclude_input_from_output": np.array([True]),
                "sampling_param_return_perf_metrics": np.array([True]),
            }
        )
    )
    stats = {"acceptance_rate": 0.5, "accepted_draft_tokens": 3, "draft_tokens": 6}
    a = response_arrays(
        req,
        text=" A",
        num_tokens=2,
        finish_reason="length",
        stop_reason=None,
        stats=stats,
        times_ns={"arrival_time_ns": 5},
    )
    assert a["text_output"][0] == b" A" and a["finish_reason"][0] == b"length"
    assert a["acceptance_rate"].dtype == np.float32 and a["total_draft_tokens"][0] == 6
    assert a["arrival_time_ns"].dtype == np.int64 and a["num_output_tokens"][0] == 2


def test_inflight_batcher_aliases():
    """The names Triton's OpenAI frontend and GenAI-Perf's kserve/tensorrtllm mode send."""
    req = parse_request(
        _get(
            {
                "text_input": np.array([b"hi"], dtype=object),
                "stream": np.array([True]),
                "max_tokens": np.array([5], np.int32),
                "temperature": np.array([0.25], np.float32),
                "top_p": np.array([0.5], np.float32),
                "top_k": np.array([4], np.int32),
                "seed": np.array([9], np.uint64),
                "stop_words": np.array([b"END"], dtype=object),
                "exclude_input_in_output": np.array([False]),
                "return_num_input_tokens": np.array([True]),
                "return_num_output_tokens": np.array([True]),
                "frequency_penalty": np.array([0.0], np.float32),
                "beam_width": np.array([1], np.int32),
            }
        )
    )
    assert req.streaming and not req.exclude_input and req.return_num_input_tokens
    assert req.sampling == {
        "max_tokens": 5,
        "temperature": pytest.approx(0.25),
        "top_p": pytest.approx(0.5),
        "top_k": 4,
        "seed": 9,
        "stop": ("END",),
    }
    a = response_arrays(
        req,
        text="x",
        num_tokens=1,
        finish_reason=None,
        stop_reason=None,
        stats=None,
        times_ns={},
        num_input_tokens=3,
    )
    assert a["num_input_tokens"].dtype == np.int32 and a["num_input_tokens"][0] == 3
    assert a["text_output"][0] == b"hix"


@pytest.mark.parametrize(
    "tensors, match",
    [
        (
            {"max_tokens": np.array([5], np.int32), "sampling_param_max_tokens": np.array([6], np.int32)},
            "'max_tokens' and 'sampling_param_max_tokens'",
        ),
        ({"presence_penalty": np.array([0.5], np.float32)}, "sampling_param_presence_penalty.*not supported"),
        (
            {"sampling_param_frequency_penalty": np.array([1.0], np.float32)},
            "frequency_penalty.*not supported",
        ),
        ({"repetition_penalty": np.array([1.2], np.float32)}, "repetition_penalty.*send 1"),
        ({"beam_width": np.array([4], np.int32)}, "beam_width.*not supported"),
    ],
)
def test_aliases_refuse_conflicts_and_unsupported_options(tensors, match):
    with pytest.raises(RequestError, match=match):
        parse_request(_get({"text_input": np.array([b"hi"], dtype=object), **tensors}))


def test_same_value_under_both_names_is_fine():
    req = parse_request(
        _get(
            {
                "text_input": np.array([b"hi"], dtype=object),
                "max_tokens": np.array([5], np.int32),
                "sampling_param_max_tokens": np.array([5], np.int32),
            }
        )
    )
    assert req.sampling["max_tokens"] == 5
