"""OpenAI-compatible HTTP API over a running tritonserver (`serve REPO --openai-port P`).

Routes: `GET /health`, `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
`POST /v1/chat/completions`; streaming as server-sent events ending with `data: [DONE]`.

- Generation goes to Triton's `nemotron` model (`TritonBackend`, asyncio gRPC); this process only renders
  prompts and parses outputs, so it is light and never a second engine.
- Chat prompts are the engine's own chat template (from the engine dir's tokenizer) rendered with `tools`
  and `chat_template_kwargs` (`enable_thinking`, default true as in Nemotron 3; any other key is passed to
  the template). Reasoning and tool calls are split by `parsers` (TensorRT-LLM `nano-v3` + `qwen3_coder`
  semantics). `tool_choice`: `none` renders no tools and parses none; `auto` renders and parses them;
  `required` / a named function end the prompt with the opening of a call (`<tool_call>\\n<function=` and,
  when named, the name) after closing the reasoning, so the model writes the call: the prompt forces it,
  as TensorRT-LLM does with guided decoding.
- Usage counts are Triton's (`num_input_tokens`, `num_output_tokens`): exact token counts of the engine.
- Errors are OpenAI-shaped `{"error": {"message", "type", "param", "code"}}`: 400 for a bad parameter (also
  when Triton refuses the request's values), 404 for an unknown model, 503 while Triton is not ready.
- A client that disconnects cancels its Triton request (streaming: the response task is cancelled;
  non-streaming: a watcher polls the connection), which frees the engine slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from triton_repo.openai_front.parsers import (
    END_THINK,
    TOOL_CALL,
    ChatOutputParser,
    parse_chat_output,
)
from triton_repo.openai_front.triton_backend import (
    TritonBackend,
    TritonRejected,
    TritonUnavailable,
    request_tensors,
)

DEFAULT_MODEL_ID = "nemotron"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_parameter")


@dataclass
class FrontConfig:
    grpc_url: str  # host:port of tritonserver's gRPC endpoint
    engine_dir: Path  # for the tokenizer (chat template) and the engine's own name
    triton_model: str = "nemotron"
    model_ids: tuple[str, ...] = field(default_factory=tuple)  # served ids; default: nemotron + engine name


def engine_name(engine_dir: Path) -> str:
    """The engine's own name: the source checkpoint's directory name from build.json, else the dir name."""
    try:
        src = json.loads((engine_dir / "build.json").read_text()).get("model", {}).get("source")
    except (OSError, ValueError):
        src = None
    return Path(src).name if src else engine_dir.name


def load_chat_tokenizer(engine_dir: Path):
    from trtllm_nemotron.tokenizer import load_tokenizer

    for d in (engine_dir / "checkpoint", engine_dir):
        if (d / "tokenizer.json").is_file():
            return load_tokenizer(d)
    raise FileNotFoundError(
        f"no tokenizer.json in {engine_dir}/checkpoint or {engine_dir}: the chat template "
        f"comes from the engine dir's tokenizer; rebuild the engine from a checkpoint with one"
    )


# ---------------------------------------------------------------------------------------------------------
# request validation


def _num(
    body: dict,
    name: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    lo_open: bool = False,
    default: Any = None,
) -> Any:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        raise bad(name, f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise bad(name, f"'{name}' must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise bad(name, f"'{name}' must be <= {hi}, got {v!r}")
    return v


@dataclass
class Sampling:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    ignore_eos: bool = False  # extension (as vLLM's): generate max_tokens tokens, for benchmarks


def parse_sampling(body: dict, *, chat: bool) -> Sampling:
    n = _num(body, "n", integer=True, default=1)
    if n != 1:
        raise bad("n", f"only n=1 is supported, got n={n}")
    for name in ("logprobs", "top_logprobs", "logit_bias", "best_of", "suffix"):
        v = body.get(name)
        if v not in (None, False, 0, 1 if name == "best_of" else None, {} if name == "logit_bias" else None):
            raise bad(name, f"'{name}' is not supported by this server; leave it out")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise bad(
            "response_format", "only response_format {'type': 'text'} is supported (no guided decoding)"
        )
    for name in ("frequency_penalty", "presence_penalty"):
        if _num(body, name, lo=-2.0, hi=2.0, default=0) != 0:
            raise bad(name, f"'{name}' is not supported by the nemotron runtime; leave it out or send 0")
    max_tokens = _num(body, "max_tokens", lo=1, integer=True)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _num(body, "max_completion_tokens", lo=1, integer=True)
    elif not chat and max_tokens is None:
        max_tokens = 16  # OpenAI's default for completions
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)) or len(stop) > 16:
        raise bad("stop", "'stop' must be a string or a list of up to 16 strings")
    seed = _num(body, "seed", integer=True, lo=0)
    stream = _flag(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("stream_options", "'stream_options' must be an object")
        if not stream:
            raise bad("stream_options", "'stream_options' is only allowed with stream=true")
        include_usage = bool(opts.get("include_usage", False))
    return Sampling(
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", lo=0.0, hi=2.0, default=1.0),
        top_p=_num(body, "top_p", lo=0.0, hi=1.0, lo_open=True, default=1.0),
        top_k=_num(body, "top_k", lo=0, integer=True),
        seed=seed,
        stop=[s for s in stop if s],
        stream=stream,
        include_usage=include_usage,
        ignore_eos=_flag(body, "ignore_eos"),
    )


def _flag(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if not isinstance(v, bool):
        raise bad(name, f"'{name}' must be a boolean, got {v!r}")
    return v


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise bad(where, "only text content parts ({'type': 'text', 'text': ...}) are supported")
            parts.append(p["text"])
        return "".join(parts)
    raise bad(where, "message content must be a string or a list of text parts")


def template_messages(messages: Any) -> list[dict]:
    """OpenAI messages -> the dicts the chat template reads (text content; tool-call arguments as mappings)."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
        ):
            raise bad(
                where, f"{where} must be an object with role system, developer, user, assistant or tool"
            )
        msg: dict[str, Any] = {
            "role": "system" if m["role"] == "developer" else m["role"],
            "content": _text_of(m.get("content"), f"{where}.content"),
        }
        if m.get("reasoning_content"):
            msg["reasoning_content"] = _text_of(m["reasoning_content"], f"{where}.reasoning_content")
        if m["role"] == "tool" and m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        if m.get("tool_calls"):
            calls = []
            for j, c in enumerate(m["tool_calls"]):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise bad(f"{where}.tool_calls[{j}]", "a tool call needs function.name")
                args = fn.get("arguments") or {}
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except ValueError as e:
                        raise bad(
                            f"{where}.tool_calls[{j}].function.arguments",
                            f"tool call arguments must be a JSON object: {e}",
                        ) from e
                calls.append(
                    {
                        "id": c.get("id"),
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": args},
                    }
                )
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def parse_tools(body: dict) -> tuple[list[dict], str | None, str]:
    """(tools to render, the forced function name or None, tool_choice mode: none|auto|required|named)."""
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise bad("tools", "'tools' must be a list of {'type': 'function', 'function': {...}}")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not (
            isinstance(t, dict)
            and t.get("type", "function") == "function"
            and isinstance(fn, dict)
            and isinstance(fn.get("name"), str)
            and fn["name"]
        ):
            raise bad(
                f"tools[{i}]",
                "each tool must be {'type': 'function', 'function': {'name': ..., 'parameters': ...}}",
            )
    choice = body.get("tool_choice", "auto" if tools else "none")
    names = [t["function"]["name"] for t in tools]
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise bad("tool_choice", "tool_choice 'required' needs 'tools'")
        return (tools if choice != "none" else []), None, choice
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise bad(
                "tool_choice", f"tool_choice names function {name!r}, which is not in 'tools' ({names})"
            )
        return tools, name, "named"
    raise bad(
        "tool_choice",
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
    )


# ---------------------------------------------------------------------------------------------------------
# the app


def create_app(cfg: FrontConfig, *, backend: TritonBackend | None = None):
    backend = backend or TritonBackend(cfg.grpc_url, cfg.triton_model)
    tokenizer = load_chat_tokenizer(cfg.engine_dir)
    model_ids = cfg.model_ids or tuple(dict.fromkeys((DEFAULT_MODEL_ID, engine_name(cfg.engine_dir))))
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await backend.close()

    app = FastAPI(lifespan=lifespan, title="trtllm-nemotron OpenAI front", docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, e: RequestValidationError):
        return JSONResponse(ApiError(400, str(e)).body(), status_code=400)

    @app.get("/health")
    async def health():
        if await backend.ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse(
            ApiError(
                503,
                f"Triton model {cfg.triton_model!r} at {cfg.grpc_url} is not ready",
                type="service_unavailable",
            ).body(),
            status_code=503,
        )

    def model_card(mid: str) -> dict:
        return {"id": mid, "object": "model", "created": created, "owned_by": "trtllm-nemotron"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(m) for m in model_ids]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in model_ids:
            raise ApiError(
                404,
                f"model {model_id!r} does not exist; this server serves {list(model_ids)}",
                param="model",
                code="model_not_found",
            )
        return model_card(model_id)

    async def read_body(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        mid = body.get("model", model_ids[0])
        if mid not in model_ids:
            raise ApiError(
                404,
                f"model {mid!r} does not exist; this server serves {list(model_ids)}",
                param="model",
                code="model_not_found",
            )
        return body

    async def collect(request: Request, chunks: AsyncIterator) -> list:
        """Drain `chunks`, cancelling them if the client disconnects first."""

        async def drain():
            return [c async for c in chunks]

        task = asyncio.ensure_future(drain())
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                task.cancel()
        return task.result()

    def sse(gen: AsyncIterator[dict]) -> StreamingResponse:
        async def events():
            try:
                async for obj in gen:
                    yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
            except ApiError as e:
                yield f"data: {json.dumps(e.body())}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def triton_chunks(prompt: str, s: Sampling, request_id: str):
        tensors = request_tensors(
            prompt,
            stream=s.stream,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            stop=s.stop,
            ignore_eos=s.ignore_eos,
        )
        try:
            async for c in backend.generate(tensors, request_id):
                yield c
        except TritonUnavailable as e:
            raise ApiError(503, str(e), type="service_unavailable") from e
        except TritonRejected as e:
            if e.user_error:
                raise ApiError(400, str(e), code="invalid_parameter") from e
            raise ApiError(500, str(e), type="server_error") from e

    async def started(prompt: str, s: Sampling, request_id: str):
        """The Triton chunks with the first one already received, so a refused request is an HTTP error
        (400/503) rather than an event inside a 200 stream."""
        gen = triton_chunks(prompt, s, request_id)
        first = await gen.__anext__()

        async def chunks():
            yield first
            async for c in gen:
                yield c

        return chunks()

    # -- /v1/completions ---------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        s = parse_sampling(body, chat=False)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise bad("prompt", "'prompt' must be a string (or a list of one string)")
        echo = bool(body.get("echo", False))
        rid = f"cmpl-{uuid.uuid4().hex}"
        mid = body.get("model", model_ids[0])

        def choice(text: str, finish: str | None) -> dict:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        if not s.stream:
            chunks = await collect(request, triton_chunks(prompt, s, rid))
            last = chunks[-1]
            text = (prompt if echo else "") + "".join(c.delta for c in chunks)
            return {
                "id": rid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": mid,
                "choices": [choice(text, _finish(last.finish_reason))],
                "usage": _usage(last),
            }

        source = await started(prompt, s, rid)

        async def stream():
            if echo:
                yield {
                    "id": rid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": mid,
                    "choices": [choice(prompt, None)],
                }
            async for c in source:
                if c.delta or c.final:
                    yield {
                        "id": rid,
                        "object": "text_completion",
                        "created": int(time.time()),
                        "model": mid,
                        "choices": [choice(c.delta, _finish(c.finish_reason) if c.final else None)],
                    }
                if c.final and s.include_usage:
                    yield {
                        "id": rid,
                        "object": "text_completion",
                        "created": int(time.time()),
                        "model": mid,
                        "choices": [],
                        "usage": _usage(c),
                    }

        return sse(stream())

    # -- /v1/chat/completions --------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_body(request)
        s = parse_sampling(body, chat=True)
        messages = template_messages(body.get("messages"))
        tools, forced, mode = parse_tools(body)
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise bad("chat_template_kwargs", "'chat_template_kwargs' must be an object")
        kwargs = dict(kwargs)
        thinking = kwargs.setdefault("enable_thinking", True)
        if not isinstance(thinking, bool):
            raise bad("chat_template_kwargs", "chat_template_kwargs.enable_thinking must be a boolean")
        force_nonempty = kwargs.pop("force_nonempty_content", False) is True
        try:
            prompt = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, **({"tools": tools} if tools else {}), **kwargs
            )
        except Exception as e:  # noqa: BLE001 - a template error is the request's fault (bad message shapes)
            raise bad("messages", f"the chat template could not render these messages: {e}") from e
        prefilled = ""
        if mode in ("required", "named"):
            if thinking:
                prompt += END_THINK + "\n"  # close the reasoning the template opened
                thinking = False
            prefilled = f"{TOOL_CALL}\n<function=" + (f"{forced}>\n" if forced else "")
            prompt += prefilled
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        mid = body.get("model", model_ids[0])

        if not s.stream:
            chunks = await collect(request, triton_chunks(prompt, s, rid))
            last = chunks[-1]
            text = "".join(c.delta for c in chunks)
            reasoning, content, calls = parse_chat_output(
                text,
                enable_thinking=thinking,
                force_nonempty_content=force_nonempty,
                tools=tools,
                prefilled=prefilled,
            )
            message: dict[str, Any] = {
                "role": "assistant",
                "content": content if (content.strip() or not calls) else None,
                "reasoning_content": reasoning or None,
            }
            if calls:
                message["tool_calls"] = [c.to_openai() for c in calls]
            finish = "tool_calls" if calls else _finish(last.finish_reason)
            return {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": mid,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": _usage(last),
            }

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": mid,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        source = await started(prompt, s, rid)

        async def stream():
            parser = ChatOutputParser(
                enable_thinking=thinking,
                force_nonempty_content=force_nonempty,
                tools=tools,
                prefilled=prefilled,
            )
            yield chunk({"role": "assistant", "content": ""})
            async for c in source:
                for d in parser.push(c.delta) + (parser.finish() if c.final else []):
                    yield chunk(d)
                if c.final:
                    yield chunk({}, "tool_calls" if parser.calls else _finish(c.finish_reason))
                    if s.include_usage:
                        yield {
                            "id": rid,
                            "object": "chat.completion.chunk",
                            "created": int(time.time()),
                            "model": mid,
                            "choices": [],
                            "usage": _usage(c),
                        }

        return sse(stream())

    app.state.model_ids = model_ids
    return app


def _usage(c) -> dict:
    """OpenAI usage from the last Triton chunk (the engine's own token counts)."""
    n_in = int(c.num_input_tokens or 0)
    return {
        "prompt_tokens": n_in,
        "completion_tokens": c.num_output_tokens,
        "total_tokens": n_in + c.num_output_tokens,
    }


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"
