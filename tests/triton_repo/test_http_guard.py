"""The HTTP guard's request checks, without a server (the served behaviour is in test_server_reliability.py)."""

from __future__ import annotations

import pytest

from triton_repo.http_guard import _Refused, check_generate_body


@pytest.mark.parametrize(
    "body",
    [
        b'{"text_input": "hi"}',
        b'{"text_input": ["hi"], "sampling_param_max_tokens": 2147483647, "sampling_param_temperature": NaN}',
        b'{"text_input": "hi", "max_tokens": 4, "stream": true, "stop_words": ["a", ""], "unknown": {"x": [1]}}',
        b'{"text_input": "hi", "sampling_param_seed": 18446744073709551615, "sampling_param_top_p": 1}',
    ],
)
def test_good_bodies_pass(body):
    check_generate_body(body)  # NaN and unknown inputs are the model's to refuse


@pytest.mark.parametrize(
    "body, match",
    [
        (b"{", "not valid JSON"),
        (b"\xc3", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"text_input": 3}', "must be a string"),
        (b'{"text_input": "a", "streaming": 1}', "must be true or false"),
        (b'{"text_input": "a", "sampling_param_max_tokens": true}', "must be an integer"),
        (b'{"text_input": "a", "sampling_param_max_tokens": 2.5}', "must be an integer"),
        (b'{"text_input": "a", "sampling_param_temperature": "hot"}', "must be a number"),
        (b'{"text_input": "a", "max_tokens": -2147483649}', "out of range for its type INT32"),
        (b'{"text_input": "a", "seed": 18446744073709551616}', "out of range for its type UINT64"),
    ],
)
def test_bad_bodies_are_refused_with_400(body, match):
    with pytest.raises(_Refused, match=match) as e:
        check_generate_body(body)
    assert e.value.status == 400
