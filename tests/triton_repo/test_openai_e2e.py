"""The OpenAI front end to end: `serve REPO --openai-port` (real tritonserver + the front) and the official
`openai` Python client.

Greedy text through the front must be the in-process runtime's on the same prompt (for chat: the prompt the
engine's chat template renders), usage counts must be the engine's token counts, bad parameters must be
OpenAI-shaped 400s that leave the server healthy, a dropped stream must free its engine slot, and 32
concurrent streams must all complete. One server for the module; the last test stops it with SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from tests.triton_repo.conftest import Served, serve_repo
from triton_repo.package import PackageConfig, package

pytestmark = pytest.mark.slow

MAX_SEQ_LEN = 1024
MAX_TOKENS = 8
SLOTS = 8
PROMPT = "def fibonacci(n):"
CHAT = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def front(cpu_engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai")
    repo = package(
        cpu_engine, tmp / "repo", PackageConfig(max_batch_size=SLOTS, max_seq_len=MAX_SEQ_LEN, device="cpu")
    )
    yield from serve_repo(cpu_engine, repo, tmp, openai=True)


@pytest.fixture(scope="module")
def client(front: Served):
    c = openai.OpenAI(base_url=front.openai, api_key="unused", max_retries=0, timeout=300)
    yield c
    c.close()


@pytest.fixture(scope="module")
def runtime(cpu_engine):
    """The in-process runtime and the engine's chat template, on the same engine dir."""
    from trtllm_nemotron.runtime import Engine, SamplingParams
    from trtllm_nemotron.tokenizer import load_tokenizer

    engine = Engine.load(cpu_engine, device="cpu", max_batch_size=SLOTS, max_seq_len=MAX_SEQ_LEN)
    tok = load_tokenizer(cpu_engine / "checkpoint")

    class Runtime:
        tokenizer = tok

        @staticmethod
        def generate(prompt: str, max_tokens: int = MAX_TOKENS):
            return engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0))

        @staticmethod
        def batch(prompts: list[str]):
            sched = engine.scheduler()
            try:
                hs = [
                    sched.submit(p, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)) for p in prompts
                ]
                return [h.result() for h in hs]
            finally:
                sched.shutdown()

        @staticmethod
        def chat_prompt(messages, **kwargs) -> str:
            return tok.apply_chat_template(messages, add_generation_prompt=True, **kwargs)

    return Runtime


def _metric(front: Served, name: str) -> int:
    text = urllib.request.urlopen(front.metrics, timeout=10).read().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith(name))
    return int(float(line.rsplit(" ", 1)[1]))


def _active(front: Served) -> int:
    return _metric(front, "nemotron_active_requests")


def _wait_idle(front: Served, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while _active(front) != 0:
        assert time.monotonic() - t0 < timeout, "a slot was not freed"
        time.sleep(0.1)
    return time.monotonic() - t0


def test_models_and_health(front, client, cpu_engine):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "nemotron" and len(ids) == 2  # plus the engine's own name (its source checkpoint's)
    assert client.models.retrieve("nemotron").id == "nemotron"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"
    with urllib.request.urlopen(front.openai.removesuffix("/v1") + "/health", timeout=10) as r:
        assert r.status == 200


@pytest.mark.parametrize("stream", [False, True])
def test_completions_greedy_text_and_usage(client, runtime, stream):
    ref = runtime.generate(PROMPT)
    if stream:
        chunks = list(
            client.completions.create(
                model="nemotron",
                prompt=PROMPT,
                max_tokens=MAX_TOKENS,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert not chunks[-1].choices and len(chunks) >= 3
    else:
        r = client.completions.create(model="nemotron", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        text, finish, usage = r.choices[0].text, [r.choices[0].finish_reason], r.usage
    assert text == ref.text and finish == [ref.finish_reason]
    assert usage.prompt_tokens == ref.stats["prompt_tokens"] == len(runtime.tokenizer.encode(PROMPT))
    assert usage.completion_tokens == len(ref.token_ids) and usage.total_tokens == usage.prompt_tokens + len(
        ref.token_ids
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("thinking", [True, False])
def test_chat_greedy_text_usage_and_enable_thinking(client, runtime, stream, thinking):
    prompt = runtime.chat_prompt(CHAT, enable_thinking=thinking)
    assert (
        prompt.endswith("<think>\n") if thinking else prompt.endswith("<think></think>")
    )  # as the template says
    ref = runtime.generate(prompt)
    kw = dict(
        model="nemotron",
        messages=CHAT,
        max_completion_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
    )
    if stream:
        chunks = list(
            client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert deltas[0].role == "assistant"
        reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        content = "".join(d.content or "" for d in deltas)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    else:
        r = client.chat.completions.create(**kw)
        msg = r.choices[0].message
        reasoning, content = getattr(msg, "reasoning_content", None) or "", msg.content or ""
        finish, usage = [r.choices[0].finish_reason], r.usage
    from triton_repo.openai_front.parsers import split_reasoning

    want = split_reasoning(ref.text, enable_thinking=thinking)
    assert (reasoning, content) == (want.reasoning, want.content)
    assert reasoning + content == ref.text.replace("</think>", "", 1)
    if not thinking:
        assert content == ref.text and reasoning == ""
    assert finish == [ref.finish_reason]
    assert usage.prompt_tokens == len(runtime.tokenizer.encode(prompt)) == ref.stats["prompt_tokens"]
    assert usage.completion_tokens == len(ref.token_ids)


def test_tools_are_rendered_by_the_engine_template(client, runtime):
    from triton_repo.openai_front.parsers import parse_chat_output

    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "required": ["city"],
                    "properties": {"city": {"type": "string"}},
                },
            },
        }
    ]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    prompt = runtime.chat_prompt(msgs, tools=tools)
    assert "<name>get_weather</name>" in prompt and "<tool_call>" in prompt  # the tools and the call format
    ref = runtime.generate(prompt)
    r = client.chat.completions.create(
        model="nemotron", messages=msgs, tools=tools, max_tokens=MAX_TOKENS, temperature=0
    )
    assert r.usage.prompt_tokens == len(runtime.tokenizer.encode(prompt))
    reasoning, content, calls = parse_chat_output(ref.text, tools=tools)
    msg = r.choices[0].message
    assert (getattr(msg, "reasoning_content", None) or "", msg.content or "") == (reasoning, content)
    assert [c.function.name for c in msg.tool_calls or []] == [c.name for c in calls]


def test_named_tool_choice_forces_a_call(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    kw = dict(
        model="nemotron",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=tools,
        max_tokens=MAX_TOKENS,
        temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    r = client.chat.completions.create(**kw)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["get_weather"]
    assert isinstance(json.loads(calls[0].function.arguments), dict) and calls[0].id.startswith("call_")
    chunks = list(client.chat.completions.create(stream=True, **kw))
    names = [
        tc.function.name
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather"] and chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "kw, param",
    [
        (dict(temperature=5.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(n=2), "n"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(stop=7), "stop"),
        (dict(logprobs=True), "logprobs"),
        (dict(extra_body={"chat_template_kwargs": {"enable_thinking": "yes"}}), "chat_template_kwargs"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(messages=[{"role": "wizard", "content": "x"}]), "messages[0]"),
    ],
)
def test_bad_parameters_are_openai_400s(front, client, kw, param):
    args = dict(model="nemotron", messages=CHAT, max_tokens=2) | kw
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    err = e.value.body
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_errors_leave_the_server_healthy(front, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=CHAT)
    with pytest.raises(
        openai.BadRequestError, match="max_seq_len"
    ):  # refused by the nemotron model in Triton
        client.completions.create(model="nemotron", prompt="word " * (2 * MAX_SEQ_LEN), max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="max_seq_len"):
        list(
            client.completions.create(
                model="nemotron", prompt="word " * (2 * MAX_SEQ_LEN), max_tokens=4, stream=True
            )
        )
    req = urllib.request.Request(
        front.openai + "/chat/completions",
        data=b"{not json",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "error" in json.loads(e.value.read())
    r = client.completions.create(model="nemotron", prompt="hello", max_tokens=2, temperature=0)
    assert r.usage.completion_tokens >= 1
    assert _wait_idle(front) < 10


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_streaming_client_that_disconnects_frees_its_slot(front, client, endpoint):
    _wait_idle(front)
    cancelled = _metric(front, "nemotron_cancelled_requests")
    kw = dict(
        model="nemotron",
        max_tokens=MAX_SEQ_LEN - 32,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    if endpoint == "chat":
        s = client.chat.completions.create(messages=CHAT, **kw)
    else:
        s = client.completions.create(prompt="Once upon a time", **kw)
    next(iter(s))  # the request holds a slot and is generating
    s.close()  # drop the connection mid-stream
    assert _wait_idle(front, timeout=60) < 60
    # the engine request was cancelled (it did not run to max_tokens)
    assert _metric(front, "nemotron_cancelled_requests") == cancelled + 1
    r = client.completions.create(model="nemotron", prompt="hello", max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_32_concurrent_streams_complete(front, runtime):
    prompts = [f"Item {i}: def f{i}(x):" for i in range(32)]
    refs = runtime.batch(prompts)

    async def one(c, p: str) -> tuple[str, str | None]:
        stream = await c.completions.create(
            model="nemotron", prompt=p, max_tokens=MAX_TOKENS, temperature=0, stream=True
        )
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def run():
        async with openai.AsyncOpenAI(
            base_url=front.openai, api_key="unused", max_retries=0, timeout=600
        ) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    results = asyncio.run(run())
    assert [t for t, _ in results] == [r.text for r in refs]
    assert all(f == r.finish_reason for (_, f), r in zip(results, refs, strict=True))
    assert _wait_idle(front) < 30


def test_serve_stops_front_and_server_on_sigint(front):
    import signal

    from triton_repo.server import port_free

    front.proc.send_signal(signal.SIGINT)
    assert front.proc.wait(60) == 0, front.log.read_text()[-3000:]
    port = int(front.openai.rsplit(":", 1)[1].split("/")[0])
    assert port_free("127.0.0.1", port) and port_free("127.0.0.1", int(front.grpc.rsplit(":", 1)[1]))
