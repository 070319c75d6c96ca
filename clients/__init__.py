"""Clients for the Triton model repository: one request (`generate`, `stream`), many (`generate_batch`), load.

`generate(prompt, *, url, protocol="grpc"|"http", stream=True, ...) -> ClientResult` speaks TensorRT-LLM's
llmapi protocol, so it works against our `nemotron` model and TensorRT-LLM's `tensorrt_llm` model alike.
Nothing here imports torch.
"""

from __future__ import annotations

from clients.client import (
    ClientResult,
    RequestRejected,
    TextStream,
    generate,
    generate_batch,
    parse_url,
    server_ready,
    stream,
)

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
