"""Triton client for the llmapi protocol: gRPC streaming and HTTP `generate` / `generate_stream` (SSE).

One request path, two transports. `_request_tensors` turns the options into the llmapi inputs
(`text_input`, `streaming`, `sampling_param_*`, `return_finish_reason`, ...; see `triton_repo/protocol.py`);
a transport yields the responses as dicts `{output name: value}`; `_Collector` turns them into text deltas
and timings. It works unchanged against our `nemotron` model and TensorRT-LLM's `tensorrt_llm` model:
- `text_output` is cumulative (TensorRT-LLM's semantics); the delta is `new[len(previous):]`.
- we always send `sampling_param_exclude_input_from_output: true` (the default of both models -- TensorRT-LLM's
  `SamplingParams` and ours -- sent anyway so a server configured otherwise cannot echo the prompt),
  `return_finish_reason: true` and `sampling_param_return_perf_metrics: true`.
- a decoupled model is called with the streaming APIs (gRPC bidirectional stream; HTTP `generate_stream`),
  a non-decoupled one with gRPC `infer` / HTTP `generate`; the model config is read once per (url, model).

Timings are taken here, on the client: TTFT = first non-empty delta - send time; inter-token latency = the gap
between token-bearing responses spread over the tokens in the later one (`num_output_tokens`, our model's
extension; one token per response when the server does not send it); tokens/s = tokens / end-to-end time.
A connection failure raises `ClientError` naming the URL and protocol; an error response raises
`RequestRejected` (a `ClientError`) with the server's message.

No torch here (`clients` is importable on any machine with tritonclient).
"""

from __future__ import annotations

import http.client
import json
import queue
import time
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from trtllm_nemotron.errors import ClientError

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


class RequestRejected(ClientError):
    """The server answered the request with an error (bad input, invalid option, cancelled)."""


@dataclass
class ClientResult:
    """One completed request, with client-side timings."""

    text: str = ""
    finish_reason: str | None = None
    num_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float = 0.0
    tokens_per_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    acceptance_rate: float | None = None
    acceptance_length: float | None = None
    accepted_draft_tokens: int | None = None
    draft_tokens: int | None = None
    kv_cache_reused_block: int | None = None  # prefix-cache blocks the server reused for this prompt
    kv_cache_missed_block: int | None = None  # whole prompt blocks it could have reused but had to compute
    kv_cache_hit_rate: float | None = None
    num_responses: int = 0
    url: str = ""
    protocol: str = ""
    model: str = ""

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "num_tokens": self.num_tokens,
            "tokens_per_s": self.tokens_per_s,
            "ttft_s": self.ttft_s,
            "acceptance_rate": self.acceptance_rate,
            "acceptance_length": self.acceptance_length,
            "accepted_draft_tokens": self.accepted_draft_tokens,
            "draft_tokens": self.draft_tokens,
            "finish_reason": self.finish_reason,
            "e2e_s": self.e2e_s,
            "url": self.url,
            "protocol": self.protocol,
            "model": self.model,
        }


def parse_url(url: str, protocol: str) -> str:
    """`host:port` from `url` ("localhost:8001", "grpc://h:p", "http://h"); Triton's default port when absent."""
    if protocol not in PROTOCOLS:
        raise ClientError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    u = url.strip()
    for scheme in ("grpc://", "http://"):
        if u.startswith(scheme):
            u = u[len(scheme) :]
    if "://" in u:
        raise ClientError(
            f"unsupported URL scheme in {url!r}: use host:port, http://host:port or grpc://host:port"
        )
    u = u.rstrip("/")
    if not u:
        raise ClientError(f"empty URL {url!r}")
    if ":" not in u:
        u = f"{u}:{DEFAULT_PORTS[protocol]}"
    host, port = u.rsplit(":", 1)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClientError(f"bad URL {url!r}: expected host:port with a port in 1..65535")
    return u


def _request_tensors(
    prompt: str,
    *,
    stream: bool,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    stop: list[str] | tuple[str, ...] | None,
    ignore_eos: bool,
) -> list[tuple[str, np.ndarray, str]]:
    """The llmapi inputs as (name, array, Triton dtype); shapes without a batch dim (max_batch_size 0)."""
    t: list[tuple[str, np.ndarray, str]] = [
        ("text_input", np.array([prompt.encode("utf-8")], dtype=np.object_), "BYTES"),
        ("streaming", np.array([stream], dtype=bool), "BOOL"),
        ("sampling_param_max_tokens", np.array([max_tokens], dtype=np.int32), "INT32"),
        ("sampling_param_temperature", np.array([temperature], dtype=np.float32), "FP32"),
        ("sampling_param_top_k", np.array([top_k], dtype=np.int32), "INT32"),
        ("sampling_param_top_p", np.array([top_p], dtype=np.float32), "FP32"),
        ("sampling_param_exclude_input_from_output", np.array([True]), "BOOL"),
        ("sampling_param_return_perf_metrics", np.array([True]), "BOOL"),
        ("return_finish_reason", np.array([True]), "BOOL"),
    ]
    if seed is not None:
        t.append(("sampling_param_seed", np.array([seed], dtype=np.uint64), "UINT64"))
    if stop:
        t.append(
            ("sampling_param_stop", np.array([s.encode("utf-8") for s in stop], dtype=np.object_), "BYTES")
        )
    if ignore_eos:  # our model's extension; TensorRT-LLM's llmapi model has no such input
        t.append(("sampling_param_ignore_eos", np.array([True]), "BOOL"))
    return t


def _scalar(v: object) -> object:
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size else None
    if isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode("utf-8", errors="replace")
    return v.item() if isinstance(v, np.generic) else v


# ---------------------------------------------------------------------------------------------------------------
# transports: each yields response dicts {name: value}; the last one is final

_DECOUPLED_CACHE: dict[tuple[str, str, str], bool] = {}


def _connect_error(url: str, protocol: str, e: BaseException) -> ClientError:
    return ClientError(
        f"cannot reach Triton at {url} over {protocol}: {e}. Is the server running "
        f"(`trtllm-nemotron serve REPO`) and is this the {protocol} port "
        f"(default {DEFAULT_PORTS[protocol]})?"
    )


class _Grpc:
    def __init__(self, url: str, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        self.mod, self.url, self.timeout = grpcclient, url, timeout
        self.client = grpcclient.InferenceServerClient(url)

    def decoupled(self, model: str) -> bool:
        key = ("grpc", self.url, model)
        if key not in _DECOUPLED_CACHE:
            from tritonclient.utils import InferenceServerException

            try:
                cfg = self.client.get_model_config(model, as_json=True, client_timeout=self.timeout)["config"]
            except InferenceServerException as e:
                msg = str(e)
                if (
                    "unavailable" in msg.lower()
                    or "failed to connect" in msg.lower()
                    or "deadline" in msg.lower()
                ):
                    raise _connect_error(self.url, "grpc", e) from e
                raise RequestRejected(f"model {model!r} at {self.url} (grpc): {msg}") from e
            _DECOUPLED_CACHE[key] = bool(cfg.get("model_transaction_policy", {}).get("decoupled", False))
        return _DECOUPLED_CACHE[key]

    def responses(self, model: str, tensors, request_id: str) -> Iterator[dict]:
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, arr, dtype in tensors:
            x = self.mod.InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(arr)
            inputs.append(x)
        if not self.decoupled(model):
            try:
                result = self.client.infer(model, inputs, request_id=request_id, client_timeout=self.timeout)
            except InferenceServerException as e:
                raise RequestRejected(
                    f"server error from {model!r} at {self.url} (grpc): {e.message()}"
                ) from e
            yield {**self._outputs(result), "__final__": True}
            return
        q: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: q.put((result, error)))
        finished = False
        try:
            try:
                self.client.async_stream_infer(
                    model, inputs, request_id=request_id, enable_empty_final_response=True
                )
            except InferenceServerException as e:
                finished = True
                _, error = q.get(timeout=5) if not q.empty() else (None, e)
                raise ClientError(f"gRPC stream to {self.url} failed: {error}") from e
            while True:
                try:
                    result, error = q.get(timeout=self.timeout)
                except queue.Empty as e:
                    raise ClientError(
                        f"no response from {model!r} at {self.url} (grpc) within {self.timeout} s"
                    ) from e
                if error is not None:
                    finished = True
                    msg = error.message() if hasattr(error, "message") else str(error)
                    if "unavailable" in msg.lower() or "failed to connect" in msg.lower():
                        raise _connect_error(self.url, "grpc", error)
                    raise RequestRejected(f"server error from {model!r} at {self.url} (grpc): {msg}")
                resp = result.get_response()
                final = (
                    resp.parameters["triton_final_response"].bool_param
                    if "triton_final_response" in resp.parameters
                    else True
                )
                out = self._outputs(result)
                out["__final__"] = final
                finished = final
                yield out
                if final:
                    return
        finally:
            self.client.stop_stream(cancel_requests=not finished)

    def _outputs(self, result) -> dict:
        return {o.name: _scalar(result.as_numpy(o.name)) for o in result.get_response().outputs}

    def close(self) -> None:
        self.client.close()


class _Http:
    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        host, port = url.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: dict | None = None) -> http.client.HTTPResponse:
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            self.conn.request(
                method, path, body=data, headers={"Content-Type": "application/json"} if data else {}
            )
            return self.conn.getresponse()
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            raise _connect_error(self.url, "http", e) from e

    def decoupled(self, model: str) -> bool:
        key = ("http", self.url, model)
        if key not in _DECOUPLED_CACHE:
            r = self._request("GET", f"/v2/models/{model}/config")
            body = r.read()
            self.close()
            if r.status != 200:
                raise RequestRejected(
                    f"model {model!r} at {self.url} (http): HTTP {r.status} {body.decode(errors='replace')}"
                )
            cfg = json.loads(body)
            _DECOUPLED_CACHE[key] = bool(cfg.get("model_transaction_policy", {}).get("decoupled", False))
        return _DECOUPLED_CACHE[key]

    def responses(self, model: str, tensors, request_id: str) -> Iterator[dict]:
        body: dict = {"id": request_id}
        for name, arr, _dtype in tensors:
            vals = [v.decode("utf-8") if isinstance(v, bytes) else v.item() for v in arr.reshape(-1)]
            body[name] = vals if name == "sampling_param_stop" else vals[0]
        endpoint = "generate_stream" if self.decoupled(model) else "generate"
        r = self._request("POST", f"/v2/models/{model}/{endpoint}", body)
        try:
            if endpoint == "generate":
                data = json.loads(r.read() or b"{}")
                if r.status != 200 or "error" in data:
                    raise RequestRejected(
                        f"server error from {model!r} at {self.url} (http): "
                        f"{data.get('error', f'HTTP {r.status}')}"
                    )
                yield {**{k: _scalar(v) for k, v in data.items()}, "__final__": True}
                return
            if r.status != 200:
                data = r.read().decode(errors="replace").strip()
                if data.startswith("data:"):  # an SSE error event
                    data = data[5:].strip()
                try:
                    data = json.loads(data).get("error", data)
                except (ValueError, AttributeError):
                    pass
                raise RequestRejected(f"server error from {model!r} at {self.url} (http): {data}")
            pending = None
            for raw in r:  # SSE: "data: {...}\n\n" per response; the stream ends after the final one
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = json.loads(line[5:])
                if "error" in data:
                    raise RequestRejected(
                        f"server error from {model!r} at {self.url} (http): {data['error']}"
                    )
                if pending is not None:
                    yield pending
                pending = {k: _scalar(v) for k, v in data.items()}
            if pending is not None:
                yield {**pending, "__final__": True}
        except (ConnectionError, OSError, http.client.HTTPException) as e:
            raise ClientError(f"connection to {self.url} (http) broke mid-response: {e}") from e
        finally:
            self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _transport(url: str, protocol: str, timeout: float):
    hostport = parse_url(url, protocol)
    if protocol == "grpc":
        return _Grpc(hostport, timeout)
    return _Http(hostport, timeout)


# ---------------------------------------------------------------------------------------------------------------
# collecting responses into a result


class _Collector:
    def __init__(self, result: ClientResult, t0: float) -> None:
        self.r, self.t0 = result, t0
        self.t_last: float | None = None
        self.tokens_seen = 0

    def add(self, out: dict) -> str:
        now = time.perf_counter()
        r = self.r
        text = out.get("text_output")
        delta = ""
        if isinstance(text, str) and len(text) >= len(r.text):
            delta = text[len(r.text) :]
            r.text = text
        n = out.get("num_output_tokens")
        if delta or (n is not None and int(n) > self.tokens_seen):
            new_tokens = int(n) - self.tokens_seen if n is not None else 1
            if new_tokens > 0:
                if self.t_last is None:
                    r.ttft_s = now - self.t0
                else:
                    gap = (now - self.t_last) / new_tokens
                    r.itl_s += [gap] * new_tokens
                self.t_last = now
                self.tokens_seen += new_tokens
        r.num_responses += 1
        if out.get("finish_reason") not in (None, "", "None"):
            r.finish_reason = str(out["finish_reason"])
        for key, attr in (
            ("acceptance_rate", "acceptance_rate"),
            ("total_accepted_draft_tokens", "accepted_draft_tokens"),
            ("total_draft_tokens", "draft_tokens"),
            ("kv_cache_reused_block", "kv_cache_reused_block"),
            ("kv_cache_missed_block", "kv_cache_missed_block"),
            ("kv_cache_hit_rate", "kv_cache_hit_rate"),
        ):
            if out.get(key) is not None:
                setattr(r, attr, float(out[key]) if attr.endswith("rate") else int(out[key]))
        return delta

    def finish(self) -> ClientResult:
        r = self.r
        r.e2e_s = time.perf_counter() - self.t0
        r.num_tokens = self.tokens_seen
        r.tokens_per_s = r.num_tokens / r.e2e_s if r.e2e_s > 0 else 0.0
        if not r.draft_tokens:
            r.acceptance_rate = r.acceptance_length = None
        elif r.accepted_draft_tokens is not None and r.num_tokens > r.accepted_draft_tokens:
            # each target step emits 1 token plus its accepted drafts: steps = tokens - accepted
            r.acceptance_length = r.num_tokens / (r.num_tokens - r.accepted_draft_tokens)
        return r


class TextStream:
    """Iterator over the text deltas of one request; `.result` is the `ClientResult` once iteration ended.

    Leaving the loop early (break, close()) cancels the request on the server.
    """

    def __init__(
        self,
        prompt: str,
        *,
        url: str,
        protocol: str = "grpc",
        stream: bool = True,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | tuple[str, ...] | None = None,
        model: str = "nemotron",
        timeout: float = 300.0,
        ignore_eos: bool = False,
        request_id: str | None = None,
    ) -> None:
        self.result = ClientResult(url=url, protocol=protocol, model=model)
        self._transport = _transport(url, protocol, timeout)
        self._tensors = _request_tensors(
            prompt,
            stream=stream,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            ignore_eos=ignore_eos,
        )
        self._model = model
        self._request_id = request_id or uuid.uuid4().hex
        self._gen = self._run()

    def _run(self) -> Generator[str, None, None]:
        try:
            self._transport.decoupled(self._model)  # connection and model check before the clock starts
            col = _Collector(self.result, time.perf_counter())
            for out in self._transport.responses(self._model, self._tensors, self._request_id):
                delta = col.add(out)
                if delta:
                    yield delta
            col.finish()
        finally:
            self._transport.close()

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()


def stream(prompt: str, *, url: str, protocol: str = "grpc", **options) -> TextStream:
    """Stream the text deltas of one request (see `TextStream`); `.result` holds the `ClientResult` after."""
    return TextStream(prompt, url=url, protocol=protocol, stream=True, **options)


def generate(
    prompt: str,
    *,
    url: str,
    protocol: str = "grpc",
    stream: bool = True,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | tuple[str, ...] | None = None,
    model: str = "nemotron",
    timeout: float = 300.0,
    ignore_eos: bool = False,
) -> ClientResult:
    """One request to a Triton llmapi-protocol model; blocks until it finished.

    Raises:
        ClientError: the server cannot be reached (names URL and protocol).
        RequestRejected: the server answered with an error (bad option, over-long prompt, ...).
    """
    s = TextStream(
        prompt,
        url=url,
        protocol=protocol,
        stream=stream,
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop,
        model=model,
        timeout=timeout,
        ignore_eos=ignore_eos,
    )
    for _ in s:
        pass
    return s.result


def generate_batch(
    prompts: list[str], *, url: str, protocol: str = "grpc", concurrency: int = 8, **options
) -> list[ClientResult]:
    """`generate` for every prompt, `concurrency` requests in flight (the server batches them); results in order."""
    if concurrency < 1:
        raise ClientError(f"concurrency must be >= 1, got {concurrency}")
    with ThreadPoolExecutor(max_workers=min(concurrency, max(1, len(prompts)))) as pool:
        futures = [pool.submit(generate, p, url=url, protocol=protocol, **options) for p in prompts]
        return [f.result() for f in futures]


def server_ready(url: str, protocol: str = "http", timeout: float = 5.0) -> bool:
    """True when the server at `url` answers ready (never raises)."""
    try:
        hostport = parse_url(url, protocol)
        if protocol == "http":
            host, port = hostport.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
            try:
                conn.request("GET", "/v2/health/ready")
                return conn.getresponse().status == 200
            finally:
                conn.close()
        import tritonclient.grpc as grpcclient

        c = grpcclient.InferenceServerClient(hostport)
        try:
            return bool(c.is_server_ready(client_timeout=timeout))
        finally:
            c.close()
    except Exception:  # noqa: BLE001 - "not ready" is the answer for any failure
        return False


__all__ = [
    "ClientResult",
    "RequestRejected",
    "TextStream",
    "generate",
    "generate_batch",
    "parse_url",
    "server_ready",
    "stream",
]
