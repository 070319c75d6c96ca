"""A small HTTP/1.1 reverse proxy in front of tritonserver's HTTP port: what no request may do to the server.

Why: the Triton 2.51 server in the nvidia-pytriton wheel segfaults on a POST body of ~5 MB sent as
`application/x-www-form-urlencoded` (what `curl -d` sends): its HTTP library (libevhtp) decodes such a body
as query arguments on the stack. Triton 2.51 has no flag to bound request bodies (`--http-max-input-size`
arrived in later releases) and answers malformed JSON on `generate` with 500. So `serve` binds tritonserver's
HTTP port to a private loopback port and puts this guard on the public one. Per request it:

- refuses a body over `max_body_bytes` with 413 before reading it (Content-Length, or while reading a chunked
  body; `Expect: 100-continue` is answered 413 instead of 100);
- forwards a form-encoded body as `application/json` (Triton parses JSON whatever the content type says;
  only the crashing form decoding is skipped);
- on `generate` / `generate_stream`, answers 400 to a body that is not a JSON object, to an input of the
  wrong JSON type (Triton answers 500) and to an integer outside its input's type (an INT32
  `sampling_param_max_tokens` of 2**31 would wrap negative);
- forwards everything else unchanged (keep-alive, chunked and server-sent-event responses streamed as they
  come), and answers 503 while tritonserver is down (restarting after a crash).

gRPC goes straight to tritonserver (its own message limits apply; the model refuses over-long prompts).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from triton_repo.protocol import LLMAPI_INPUTS, NEMOTRON_INPUTS

DEFAULT_MAX_BODY_BYTES = 4 << 20  # 4 MiB: a 131072-token prompt is ~0.5 MB of text
_GENERATE = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/generate(_stream)?/?(\?.*)?$")
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "expect",
    "host",
}
_INPUTS = {t.name: t for t in (*LLMAPI_INPUTS, *NEMOTRON_INPUTS)}.values()  # llmapi + our aliases
_INT_RANGES = {
    "TYPE_INT32": (-(2**31), 2**31 - 1),
    "TYPE_UINT64": (0, 2**64 - 1),
    "TYPE_INT64": (-(2**63), 2**63 - 1),
}
INPUT_RANGES: dict[str, tuple[str, int, int]] = {
    t.name: (t.dtype[5:], *_INT_RANGES[t.dtype]) for t in _INPUTS if t.dtype in _INT_RANGES
}
_JSON_KINDS = {
    "TYPE_STRING": (str, "a string"),
    "TYPE_BOOL": (bool, "true or false"),
    "TYPE_FP32": ((int, float), "a number"),
}
INPUT_TYPES: dict[str, tuple[str, Any, str]] = {
    t.name: (t.dtype[5:], *(_JSON_KINDS.get(t.dtype) or (int, "an integer"))) for t in _INPUTS
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_generate_body(body: bytes) -> None:
    """Raise _Refused(400) unless `body` is a JSON object whose integer inputs fit their tensor types."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Refused(
            400,
            f"the request body is not valid JSON ({e}); send a JSON object such as "
            '{"text_input": "Hello", "sampling_param_max_tokens": 16}',
        ) from e
    if not isinstance(doc, dict):
        raise _Refused(
            400, f"the request body must be a JSON object of inputs, got a JSON {type(doc).__name__}"
        )
    for name, value in doc.items():
        if name not in INPUT_TYPES:
            continue
        dtype, kind, what = INPUT_TYPES[name]
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
                raise _Refused(
                    400,
                    f"input {name!r} must be {what} (or a list of them) for its type {dtype}, "
                    f"got {json.dumps(v)[:80]}",
                )
            if name not in INPUT_RANGES:
                continue
            lo, hi = INPUT_RANGES[name][1:]
            if not lo <= v <= hi:
                raise _Refused(400, f"input {name!r} = {v} is out of range for its type {dtype} ({lo}..{hi})")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # stream each SSE chunk at once
    server: _GuardServer
    _upstream: http.client.HTTPConnection | None = None  # this client connection's tritonserver connection

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass  # tritonserver logs requests itself when asked (--log-verbose)

    def _send_error_json(self, status: int, message: str, *, close: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _too_large(self, size: str) -> None:
        self._send_error_json(
            413,
            f"request body of {size} bytes is over the server's limit of "
            f"{self.server.max_body_bytes} bytes (serve --http-max-body-bytes)",
            close=True,
        )

    def _drain(self, limit: int = 64 << 20) -> None:
        """Read and drop what the client still sends of a refused body (up to `limit` bytes, 10 s), so a client
        that sends its whole body before reading sees the 413 instead of a reset connection."""
        with contextlib.suppress(OSError, ValueError):
            self.connection.settimeout(10)
            length = self.headers.get("Content-Length", "")
            left = min(int(length), limit) if length.strip().isdigit() else limit
            while left > 0:
                got = self.rfile.read1(min(left, 1 << 20))
                if not got:
                    break
                left -= len(got)

    def handle_expect_100(self) -> bool:
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.max_body_bytes:
            self._too_large(length)
            self._drain()  # a client that sent the body anyway (Expect is only a hint)
            return False
        return super().handle_expect_100()

    def _read_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError as e:
                    raise _Refused(400, "malformed chunked request body") from e
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    return b"".join(parts)
                total += size
                if total > limit:
                    raise _Refused(413, f"more than {limit}")
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise _Refused(400, f"bad Content-Length {length!r}")
        if int(length) > limit:
            raise _Refused(413, length)
        return self.rfile.read(int(length))

    def _proxy(self) -> None:
        try:
            body = self._read_body()
            if self.command == "POST" and _GENERATE.match(self.path):
                check_generate_body(body)
        except _Refused as e:
            if e.status == 413:
                self._too_large(str(e))
                self._drain()
            else:
                self._send_error_json(e.status, str(e), close=True)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            headers["Content-Type"] = "application/json"
        if body or self.command in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        try:
            resp = self._upstream_request(body, headers)
        except OSError:
            self._send_error_json(
                503,
                "tritonserver is not available (starting, or restarting after a crash); retry shortly",
                close=True,
            )
            return
        self._relay(resp)

    def _upstream_request(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        for attempt in (0, 1):  # a kept-alive upstream connection may have been closed: reconnect once
            conn = self._upstream
            if conn is None:
                host, port = self.server.upstream
                conn = self._upstream = http.client.HTTPConnection(host, port, timeout=None)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                return conn.getresponse()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._upstream = None
                if attempt:
                    raise OSError("upstream unavailable") from None
        raise AssertionError("unreachable")

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        length = resp.getheader("Content-Length")
        chunked = not no_body and length is None
        if no_body:
            self.send_header("Content-Length", "0" if length is None else length)
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            while not no_body:
                data = resp.read1(65536)
                if not data:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:  # the client went away: drop the upstream request too (frees its slot)
            self.close_connection = True
            resp.close()
            self._drop_upstream()
            return
        if resp.will_close:
            self._drop_upstream()

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            with contextlib.suppress(Exception):
                self._upstream.close()
            self._upstream = None

    def finish(self) -> None:
        self._drop_upstream()
        super().finish()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _proxy


class _GuardServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], upstream: tuple[str, int], max_body_bytes: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        super().__init__(addr, _Handler)
        self.upstream = upstream
        self.max_body_bytes = max_body_bytes


class HttpGuard:
    """The guard on `host:port`, forwarding to tritonserver's HTTP port `upstream` (see the module docstring).

    `start()` binds (OSError when the port is taken) and serves from a daemon thread; `stop()` closes it.
    """

    def __init__(
        self, host: str, port: int, upstream: tuple[str, int], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ) -> None:
        self.addr, self.upstream, self.max_body_bytes = (host, port), upstream, max_body_bytes
        self._server: _GuardServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HttpGuard:
        self._server = _GuardServer(self.addr, self.upstream, self.max_body_bytes)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="http-guard", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
