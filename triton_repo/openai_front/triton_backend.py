"""The front's only way to generate: a running tritonserver, over tritonclient's asyncio gRPC stream.

One bidirectional `ModelStreamInfer` stream per request (the streams share one channel). The request side of
the stream stays open until the final response, and leaving the response loop early (client gone, error)
cancels the gRPC call, which Triton turns into `is_cancelled()` for the model: the `nemotron` model then
frees the request's engine slot.

Requests use the llmapi names plus `return_num_input_tokens` (our model's `num_input_tokens` output) for
exact usage counts; `text_output` is cumulative, so the delta is `new[len(previous):]`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np


class TritonUnavailable(RuntimeError):
    """Triton cannot be reached or the model is not ready (the front answers 503)."""


class TritonRejected(RuntimeError):
    """Triton answered the request with an error (the front answers 400 for bad input, 500 otherwise)."""

    def __init__(self, message: str, *, user_error: bool) -> None:
        super().__init__(message)
        self.user_error = user_error


@dataclass
class Chunk:
    """One Triton response: the new text, the counts so far, and the finish reason on the last one."""

    delta: str
    num_input_tokens: int | None
    num_output_tokens: int
    finish_reason: str | None
    final: bool


def request_tensors(
    prompt: str,
    *,
    stream: bool,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
    stop: list[str] | None,
    ignore_eos: bool = False,
) -> list[tuple[str, np.ndarray, str]]:
    """The llmapi inputs of one request as (name, array, Triton dtype); absent options are left out."""
    t: list[tuple[str, np.ndarray, str]] = [
        ("text_input", np.array([prompt.encode("utf-8")], dtype=np.object_), "BYTES"),
        ("streaming", np.array([stream]), "BOOL"),
        ("return_finish_reason", np.array([True]), "BOOL"),
        ("return_num_input_tokens", np.array([True]), "BOOL"),
    ]
    if max_tokens is not None:
        t.append(("sampling_param_max_tokens", np.array([max_tokens], dtype=np.int32), "INT32"))
    if temperature is not None:
        t.append(("sampling_param_temperature", np.array([temperature], dtype=np.float32), "FP32"))
    if top_p is not None:
        t.append(("sampling_param_top_p", np.array([top_p], dtype=np.float32), "FP32"))
    if top_k is not None:
        t.append(("sampling_param_top_k", np.array([top_k], dtype=np.int32), "INT32"))
    if seed is not None:
        t.append(("sampling_param_seed", np.array([seed], dtype=np.uint64), "UINT64"))
    if ignore_eos:  # our model's extension
        t.append(("sampling_param_ignore_eos", np.array([True]), "BOOL"))
    if stop:
        t.append(
            ("sampling_param_stop", np.array([s.encode("utf-8") for s in stop], dtype=np.object_), "BYTES")
        )
    return t


def _first(result, name: str):
    try:
        arr = result.as_numpy(name)
    except Exception:  # noqa: BLE001 - an output the response does not carry
        return None
    if arr is None or arr.size == 0:
        return None
    v = arr.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode("utf-8", errors="replace")
    return v.item() if isinstance(v, np.generic) else v


_USER_ERROR_MARKERS = (
    "bad request",
    "unexpected inference input",
    "expected",
    "must be",
    "not supported",
    "max_seq_len",
    "too long",
    "invalid",
)


class TritonBackend:
    """tritonclient.grpc.aio client of the `nemotron` model at `url` (host:port)."""

    def __init__(self, url: str, model: str = "nemotron") -> None:
        self.url, self.model = url, model
        self._client = None

    @property
    def client(self):
        if self._client is None:  # created inside the running event loop
            import tritonclient.grpc.aio as grpcaio

            self._client = grpcaio.InferenceServerClient(self.url)
        return self._client

    async def ready(self, timeout: float = 2.0) -> bool:
        try:
            return bool(await self.client.is_model_ready(self.model, client_timeout=timeout))
        except Exception:  # noqa: BLE001 - not ready is the answer to any failure
            return False

    async def generate(
        self, tensors: list[tuple[str, np.ndarray, str]], request_id: str
    ) -> AsyncIterator[Chunk]:
        """Yield one `Chunk` per Triton response until the final one; cancels the request if left early."""
        from tritonclient.grpc import InferInput

        inputs = []
        for name, arr, dtype in tensors:
            x = InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(arr)
            inputs.append(x)
        done = asyncio.Event()

        async def requests():
            yield {"model_name": self.model, "inputs": inputs, "request_id": request_id}
            await done.wait()  # keep the request side open until the final response

        calls = self.client.stream_infer(requests())
        finished = False
        text = ""
        n_in: int | None = None
        n_out = 0
        try:
            async for result, error in calls:
                if error is not None:
                    finished = True
                    raise self._error(str(error))
                # the asyncio client cannot ask for Triton's empty final response; the `nemotron` model
                # sends `finish_reason` (return_finish_reason) on its final response and only there
                reason = _first(result, "finish_reason")
                final = reason is not None
                new = _first(result, "text_output")
                delta = ""
                if isinstance(new, str) and len(new) >= len(text):
                    delta, text = new[len(text) :], new
                n_in = _first(result, "num_input_tokens") if n_in is None else n_in
                n_out = int(_first(result, "num_output_tokens") or n_out)
                finished = final
                yield Chunk(delta, n_in, n_out, reason, final)
                if final:
                    return
            finished = True
            raise TritonUnavailable(f"Triton at {self.url} closed the stream before the final response")
        except asyncio.CancelledError:
            raise
        except (TritonRejected, TritonUnavailable):
            raise
        except Exception as e:  # grpc.aio.AioRpcError and friends: the server went away
            finished = True
            raise TritonUnavailable(f"Triton at {self.url} (gRPC) failed: {e}") from e
        finally:
            done.set()
            if not finished:
                calls.cancel()

    def _error(self, message: str) -> Exception:
        low = message.lower()
        if "unavailable" in low or "failed to connect" in low or "not ready" in low or "unknown model" in low:
            return TritonUnavailable(f"Triton at {self.url}: {message}")
        return TritonRejected(message, user_error=any(m in low for m in _USER_ERROR_MARKERS))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
