"""Nemotron 3 output parsing (reasoning split, Qwen3-Coder XML tool calls) on recorded-style outputs.

The outputs below are written from the format in spec `openai_serving.md` (what Nemotron 3's template asks the
model to write). Every test streams each output split at every character position (and one character per
delta) and checks that the stream gives exactly the whole-text result and never leaks a partial tag.
"""

from __future__ import annotations

import json

import pytest

from triton_repo.openai_front.parsers import (
    ChatOutputParser,
    ToolCallParser,
    convert_value,
    parse_chat_output,
    parse_tool_calls,
    split_reasoning,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "threshold": {"type": "number"},
                "zip": {"type": "string"},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "filters": {"type": "object"},
                "tags": {"type": "array"},
                "limit": {"type": ["integer", "null"]},
            },
        },
    },
}
TOOLS = [WEATHER, SEARCH]

CLOSED = "The user greets me. I should answer politely.\n</think>\nHello! How can I help you today? 🙂"
UNCLOSED = "Let me think about the capital of France. It is Paris, but I keep thinking"
CALL_NO_END_THINK = (
    "The user wants the weather, I will call the tool.\n<tool_call>\n<function=get_weather>\n"
    "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n"
    "</tool_call>\n"
)
TWO_CALLS = (
    "I need the weather and a search.\n</think>\nLet me look that up.\n<tool_call>\n<function=get_weather>\n"
    "<parameter=city>\nSão Paulo\n</parameter>\n<parameter=metric>\ntrue\n</parameter>\n"
    "<parameter=threshold>\n2.5\n</parameter>\n<parameter=zip>\n007\n</parameter>\n</function>\n</tool_call>\n"
    "<tool_call>\n<function=search>\n<parameter=query>\nline one\nline two\n</parameter>\n"
    '<parameter=filters>\n{"lang": "en", "year": 2024}\n</parameter>\n<parameter=tags>\n["a", "b"]\n'
    "</parameter>\n<parameter=limit>\nnull\n</parameter>\n</function>\n</tool_call>"
)
UNKNOWN_TOOL = "done\n</think>\n<tool_call>\n<function=rm_rf>\n<parameter=path>\n/\n</parameter>\n</function>\n</tool_call>"
CUT_IN_CALL = (
    "ok</think>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
    "<parameter=days>\n1"
)
LOOKALIKE = "x</think>Use a <tool_ tag or <tool_call without a function and </think> literally."


def _splits(text: str):
    yield [text]
    yield list(text)  # one character per delta
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]


def _stream(deltas: list[str], **kw) -> tuple[str, str, list[dict], list[dict]]:
    """Run the chat parser over `deltas`; (reasoning, content, calls assembled from deltas, all deltas)."""
    p = ChatOutputParser(**kw)
    events = [e for d in deltas for e in p.push(d)] + p.finish()
    reasoning = "".join(e.get("reasoning_content", "") for e in events)
    content = "".join(e.get("content", "") for e in events)
    calls: dict[int, dict] = {}
    for e in events:
        for c in e.get("tool_calls", []):
            slot = calls.setdefault(c["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in c:
                assert slot["id"] is None, "a call's id is sent once"
                slot["id"], slot["name"] = c["id"], c["function"]["name"]
            slot["arguments"] += c["function"]["arguments"]
    return reasoning, content, [calls[i] for i in sorted(calls)], events


def _check_stream_equals_whole(text: str, **kw):
    whole_r, whole_c, whole_calls = parse_chat_output(text, **kw)
    for deltas in _splits(text):
        r, c, calls, events = _stream(deltas, **kw)
        assert (r, c) == (whole_r, whole_c), f"split {[len(d) for d in deltas]}"
        assert [(x["name"], json.loads(x["arguments"])) for x in calls] == [
            (x.name, x.arguments) for x in whole_calls
        ]
        assert all(x["id"].startswith("call_") for x in calls)
        # deltas are never taken back, so equal concatenations mean no partial tag ever reached a delta
    return whole_r, whole_c, whole_calls


def test_reasoning_closed():
    r, c, calls = _check_stream_equals_whole(CLOSED)
    assert r == "The user greets me. I should answer politely.\n"
    assert c == "\nHello! How can I help you today? 🙂" and calls == []


def test_reasoning_unclosed_stays_reasoning():
    r, c, _ = _check_stream_equals_whole(UNCLOSED)
    assert (r, c) == (UNCLOSED, "")


def test_force_nonempty_content_moves_unclosed_reasoning():
    r, c, _ = parse_chat_output(UNCLOSED, force_nonempty_content=True)
    assert (r, c) == ("", UNCLOSED)
    r, c, _, _ = _stream(list(UNCLOSED), force_nonempty_content=True)
    assert c == UNCLOSED  # streamed: the reasoning was sent, and is repeated as the content at the end
    r, c, _ = parse_chat_output(CLOSED, force_nonempty_content=True)
    assert c.strip()  # content present: nothing moves


def test_thinking_off_is_content_unless_the_model_opens_think():
    s = split_reasoning("Paris.", enable_thinking=False)
    assert (s.reasoning, s.content) == ("", "Paris.")
    r, c, _ = _check_stream_equals_whole("\n<think>short</think>Paris.", enable_thinking=False)
    assert (r, c) == ("short", "Paris.")
    r, c, _ = _check_stream_equals_whole("Use <think> tags.</think>", enable_thinking=False)
    assert (r, c) == ("", "Use <think> tags.</think>")  # not at the start: plain content


def test_tool_call_implicitly_ends_reasoning():
    r, c, calls = _check_stream_equals_whole(CALL_NO_END_THINK, tools=TOOLS)
    assert r == "The user wants the weather, I will call the tool.\n"
    assert c.strip() == ""
    assert [(x.name, x.arguments) for x in calls] == [("get_weather", {"city": "Paris", "days": 3})]


def test_several_calls_with_typed_arguments():
    r, c, calls = _check_stream_equals_whole(TWO_CALLS, tools=TOOLS)
    assert r == "I need the weather and a search.\n" and c.strip() == "Let me look that up."
    assert [x.name for x in calls] == ["get_weather", "search"]
    assert calls[0].arguments == {"city": "São Paulo", "metric": True, "threshold": 2.5, "zip": "007"}
    assert calls[1].arguments == {
        "query": "line one\nline two",
        "filters": {"lang": "en", "year": 2024},
        "tags": ["a", "b"],
        "limit": None,
    }
    assert len({x.id for x in calls}) == 2
    assert json.loads(calls[0].to_openai()["function"]["arguments"]) == calls[0].arguments


def test_unknown_function_stays_content():
    r, c, calls = _check_stream_equals_whole(UNKNOWN_TOOL, tools=TOOLS)
    assert calls == [] and c == UNKNOWN_TOOL.split("</think>", 1)[1]


def test_call_cut_by_length_keeps_completed_parameters():
    _, c, calls = _check_stream_equals_whole(CUT_IN_CALL, tools=TOOLS)
    assert [(x.name, x.arguments) for x in calls] == [("get_weather", {"city": "Rome"})] and c == "\n"


def test_lookalike_tags_are_content():
    r, c, calls = _check_stream_equals_whole(LOOKALIKE, tools=TOOLS)
    assert r == "x" and calls == []
    assert c == "Use a <tool_ tag or <tool_call without a function and </think> literally."


def test_no_tools_leaves_tool_text_in_content():
    _, c, calls = _check_stream_equals_whole(TWO_CALLS)
    assert calls == [] and "<tool_call>" in c


def test_partial_tag_is_held_back_not_leaked():
    p = ToolCallParser(TOOLS)
    assert p.push("Sure.\n<tool_").content == "Sure.\n"
    d = p.push("call>\n<function=get_weather>\n")
    assert d.content == "" and d.calls[0][2] == "get_weather" and d.calls[0][3] == ""
    d = p.push("<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>")
    assert d.calls == [(0, None, None, '{"city": "Oslo"}')]


def test_prefilled_call_for_required_and_named_tool_choice():
    content, calls = parse_tool_calls(
        "get_weather>\n<parameter=city>\nLima\n</parameter>\n</function>\n</tool_call>",
        TOOLS,
        prefilled="<tool_call>\n<function=",
    )
    assert content == "" and [(x.name, x.arguments) for x in calls] == [("get_weather", {"city": "Lima"})]
    content, calls = parse_tool_calls(
        "<parameter=query>\nx\n</parameter>\n</function>\n</tool_call>",
        TOOLS,
        prefilled="<tool_call>\n<function=search>\n",
    )
    assert [(x.name, x.arguments) for x in calls] == [("search", {"query": "x"})]


@pytest.mark.parametrize(
    "raw, schema, want",
    [
        ("42", {"type": "integer"}, 42),
        ("42", {"type": "string"}, "42"),
        ("4.0", {"type": "number"}, 4.0),
        ("7", {"type": "number"}, 7),
        ("False", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, "yes"),
        ("{'a': 1}", {"type": "object"}, {"a": 1}),
        ("[1, 2]", None, [1, 2]),
        ("plain text", None, "plain text"),
        ("3", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, 3),
        ("x", {"type": ["integer", "string"]}, "x"),
        ("None", {"type": "null"}, None),
        ("red", {"enum": ["red", "green"]}, "red"),
    ],
)
def test_convert_value_follows_schema(raw, schema, want):
    got = convert_value(raw, schema)
    assert got == want and type(got) is type(want)


def test_chat_template_renders_tools_and_calls_in_the_format_the_parser_reads():
    """The package's one template (Nemotron 3's shape) and the tool parser agree: a call rendered into the
    history parses back to the same call; tools, tool results and truncated reasoning land where Nemotron 3's
    template puts them."""
    from trtllm_nemotron.tokenizer import CHATML_TEMPLATE, Tokenizer, byte_level_tokenizer

    tok = Tokenizer(byte_level_tokenizer(), chat_template=CHATML_TEMPLATE)
    args = {"city": "São Paulo", "days": 3, "metric": True, "filters": {"a": [1, 2]}}
    history = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I need the tool.",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": args}}],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "20 C"},
    ]
    text = tok.apply_chat_template(history, tools=TOOLS)
    system = text.split("<|im_end|>")[0]
    assert system.startswith(
        "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>"
    )
    assert (
        "<function>\n<name>get_weather</name>\n<parameters>\n<parameter>\n<name>city</name>\n<type>string</type>"
        in system
        and '<required>["city"]</required>\n</parameters>\n</function>' in system
    )
    turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert turn.startswith("<think>\nI need the tool.\n</think>\n<tool_call>\n<function=get_weather>\n")
    schema = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "metric": {"type": "boolean"},
                    "filters": {"type": "object"},
                },
            },
        },
    }
    reasoning, content, calls = parse_chat_output(turn.removeprefix("<think>\n"), tools=[schema])
    assert reasoning == "I need the tool.\n" and content.strip() == ""
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", args)]
    assert (
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n20 C\n</tool_response>\n"
        "<|im_end|>\n<|im_start|>assistant\n<think>\n" in text
    )
    later = tok.apply_chat_template(
        history
        + [
            {"role": "assistant", "content": "Sunny.", "reasoning_content": "r"},
            {"role": "user", "content": "Thanks"},
        ],
        enable_thinking=False,
    )
    assert "I need the tool." not in later and "<think></think>\n<tool_call>" in later  # truncated history
    assert later.endswith(
        "<think></think>Sunny.<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>"
    )
