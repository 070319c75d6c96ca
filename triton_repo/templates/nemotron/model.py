"""Triton Python-backend model `nemotron`: our runtime on an engine dir, behind TensorRT-LLM's llmapi protocol.

Written into `<repo>/nemotron/1/model.py` by `trtllm-nemotron package`; the tensors and their semantics are
`triton_repo.protocol` (the llmapi model's names: `text_input`, `streaming`, `sampling_param_*` in, and the
inflight-batcher aliases; cumulative `text_output`, `finish_reason`, `num_input_tokens` / `num_output_tokens`,
timing and acceptance outputs out).

Design:
- The model is decoupled and `max_batch_size: 0`: Triton hands each request to `execute()` on its own, and
  batching is the runtime's continuous-batching scheduler (`engine.scheduler()`), which interleaves all
  requests in flight over `max_batch_size` engine slots. `execute()` only parses, validates and submits,
  then returns. Responses go out from ONE sender thread: the scheduler hands it each iteration's events of
  every stream as one batch (its `deliver` callback), so a token costs no thread wake-up of its own; when the
  sender falls behind it takes every batch already queued and sends one response per stream for all of them
  (a stream's first token always in a response of its own, so clients measure TTFT).
  The `stream_interval` parameter (TensorRT-LLM's; default 1) makes the scheduler deliver a stream's tokens at
  its first token, its last and every n-th iteration only: fewer responses (the stub's IPC) at high load.
- A bad request (missing/ill-shaped input, invalid sampling option, over-long prompt) gets an error response
  with the final flag; nothing a request does raises out of `execute()`, so the server stays up.
- Cancellation: a watcher thread polls `response_sender.is_cancelled()` (set by Triton when a client cancels
  or drops its gRPC stream or HTTP connection) every 100 ms and calls `handle.cancel()`, which frees the slot.
  Sends and that poll are serialized per request and the poll stops at the final response (Triton 2.51
  segfaults in `TRITONBACKEND_ResponseFactoryIsCancelled` when a sender is polled after its final response). A `stop: true`
  request carrying the same request id cancels too, as in the llmapi model.
- Custom metrics (on the metrics port): `nemotron_active_requests` (gauge) counts requests holding a slot or
  queued, `nemotron_cancelled_requests` (counter) the requests cancelled before they finished; tests use them
  to see that a dropped client's request was cancelled and freed its slot.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_repo.protocol import RequestError, parse_request, response_arrays

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_CANCEL_POLL_S = 0.1  # as the llmapi model (cancellation_check_period_ms: 100)


class _Live:
    """One request in flight: its Triton sender, runtime handle and bookkeeping."""

    def __init__(self, sender, req, user_id: str, arrival_ns: int) -> None:
        self.sender = sender
        self.req = req
        self.handle: Any = None  # the RequestHandle, once submitted
        self.user_id = user_id
        self.cancelled = False
        self.started = False  # a response (or the final one) has been sent
        self.text = ""
        self.num_tokens = 0
        self.times = {"arrival_time_ns": arrival_ns, "first_scheduled_time_ns": arrival_ns}
        # Guards the sender: Triton frees a request's response factory once the final response is sent, and
        # `is_cancelled()` on it after that crashes the server. Sends and the watcher's check hold this lock;
        # `done` is set, under it, with the final send.
        self.lock = threading.Lock()
        self.done = False

    def send(self, model: TritonPythonModel, **kw) -> bool:
        with self.lock:
            if self.done:
                return False
            self.done = bool(kw.get("final"))
            return model._send(self.sender, **kw)

    def check_cancelled(self) -> bool:
        with self.lock:
            return not self.done and self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"])
        engine_dir = Path(params["engine_dir"])
        if not engine_dir.is_absolute():
            engine_dir = (model_dir / engine_dir).resolve()
        engine_dir = Path(os.environ.get("NEMOTRON_ENGINE_DIR", engine_dir))
        if not engine_dir.is_dir():
            raise pb_utils.TritonModelException(
                f"engine dir {engine_dir} does not exist; re-run `trtllm-nemotron package ENGINE --out REPO` "
                f"or set NEMOTRON_ENGINE_DIR"
            )

        import torch

        from trtllm_nemotron.runtime import Engine, SamplingParams

        device = params.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        mtp = int(params["mtp"]) if params.get("mtp", "") != "" else None
        max_seq_len = int(params["max_seq_len"]) if params.get("max_seq_len", "") != "" else None
        # prefix cache: on by default ("" = the budget the memory plan picks), "0" turns it off
        prefix_mb = float(params["prefix_cache_mb"]) if params.get("prefix_cache_mb", "") != "" else None
        t0 = time.perf_counter()
        self.engine = Engine.load(
            engine_dir,
            device=device,
            max_batch_size=int(params.get("max_batch_size", "8")),
            max_seq_len=max_seq_len,
            mtp=mtp,
            prefix_cache_mb=prefix_mb,
        )
        self.SamplingParams = SamplingParams
        stream_interval = int(params.get("stream_interval", "") or 1)
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.scheduler = self.engine.scheduler(stream_interval=stream_interval, deliver=self.outbox.put)
        prefix = self.engine.prefix
        pb_utils.Logger.log_info(
            f"[nemotron] engine {engine_dir} on {device}: max_batch_size={self.engine.max_batch_size} "
            f"max_seq_len={self.engine.max_seq_len} mtp={self.engine.mtp} stream_interval={stream_interval} "
            f"torch_threads={torch.get_num_threads()} "
            + (
                f"prefix_cache={prefix.budget_bytes / 2**20:.0f} MiB in blocks of {prefix.block_size} "
                if prefix
                else "prefix_cache=off "
            )
            + f"({time.perf_counter() - t0:.1f} s)"
        )

        self.lock = threading.Lock()
        self.live: dict[int, _Live] = {}  # id(RequestHandle) -> its request
        self.running = True
        self.metric_family = pb_utils.MetricFamily(
            name="nemotron_active_requests",
            description="requests queued or holding an engine slot",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self.active_metric = self.metric_family.Metric(labels={"model": args["model_name"]})
        self.active_metric.set(0)
        self.prefix_metrics = (
            self._prefix_metrics(args["model_name"]) if self.engine.prefix is not None else None
        )
        self.cancelled_family = pb_utils.MetricFamily(
            name="nemotron_cancelled_requests",
            description="requests cancelled before they finished",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.cancelled_metric = self.cancelled_family.Metric(labels={"model": args["model_name"]})
        self.watcher = threading.Thread(target=self._watch_cancellation, name="nemotron-cancel", daemon=True)
        self.watcher.start()
        self.sender_thread = threading.Thread(target=self._send_loop, name="nemotron-sender", daemon=True)
        self.sender_thread.start()

    # -- request intake ------------------------------------------------------------------------------------
    def execute(self, requests):
        for request in requests:
            self._accept(request)
        return None

    def _accept(self, request) -> None:
        arrival_ns = time.time_ns()
        sender = request.get_response_sender()

        def get(name: str):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        try:
            req = parse_request(get)
            if req.stop_request:
                self._stop_by_id(request.request_id())
                self._send(sender, error=("Request cancelled by client", "CANCELLED"), final=True)
                return
            params = self.SamplingParams(**req.sampling)
            params.validate()
            live = _Live(sender, req, request.request_id(), arrival_ns)
            with self.lock:  # registered before the sender can look its first events up
                live.handle = self.scheduler.submit(
                    req.prompt, params, request_id=request.request_id() or None
                )
                self.live[id(live.handle)] = live
                self.active_metric.set(len(self.live))
        except Exception as e:  # noqa: BLE001 - every request problem becomes that request's error response
            kind = (
                "INVALID_ARG"
                if isinstance(e, (RequestError, ValueError, TypeError)) or _is_user_error(e)
                else None
            )
            self._send(sender, error=(f"bad request: {e}", kind), final=True)
            return

    # -- responses ---------------------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        """The one sender: each batch is (handle, event) pairs of one scheduler iteration; every batch already
        queued is taken at once, and each stream gets one response for all of its new events."""
        while True:
            batches = [self.outbox.get()]
            while True:
                try:
                    batches.append(self.outbox.get_nowait())
                except queue.Empty:
                    break
            if any(b is None for b in batches):  # finalize()
                return
            order: dict[int, list] = {}
            for batch in batches:
                for h, ev in batch:
                    order.setdefault(id(h), []).append(ev)
            for key, evs in order.items():
                with self.lock:
                    live = self.live.get(key)
                if live is None:
                    continue
                if (
                    not live.started and len(evs) > 1
                ):  # the first token goes out on its own (the client's TTFT)
                    self._respond(key, live, evs[:1])
                    evs = evs[1:]
                self._respond(key, live, evs)

    def _respond(self, key: int, live: _Live, evs: list) -> None:
        live.started = True
        try:
            for e in evs:
                if e.token_ids:
                    live.num_tokens += len(e.token_ids)
                    now = time.time_ns()
                    live.times.setdefault("first_token_time_ns", now)
                    live.times["last_token_time_ns"] = now
                live.text += e.text
            ev, req = evs[-1], live.req
            n_prompt = live.handle.num_prompt_tokens
            if ev.finish_reason is None:
                if req.streaming and any(e.text for e in evs) and not live.cancelled:
                    arrays = response_arrays(
                        req,
                        text=live.text,
                        num_tokens=live.num_tokens,
                        finish_reason=None,
                        stop_reason=None,
                        stats=None,
                        times_ns=live.times,
                        num_input_tokens=n_prompt,
                    )
                    if not live.send(self, arrays=arrays):
                        live.cancelled = True
                        live.handle.cancel()
                return
            if ev.finish_reason == "error":
                live.send(self, error=(f"generation failed: {ev.error}", None), final=True)
            elif ev.finish_reason == "cancelled" or live.cancelled:
                self.cancelled_metric.increment(1)
                live.send(self, error=("Request cancelled by client", "CANCELLED"), final=True)
            else:
                arrays = response_arrays(
                    req,
                    text=live.text,
                    num_tokens=live.num_tokens,
                    finish_reason=ev.finish_reason,
                    stop_reason=None,
                    stats=ev.stats,
                    times_ns=live.times,
                    num_input_tokens=n_prompt,
                )
                live.send(self, arrays=arrays, final=True)
        except Exception as e:  # noqa: BLE001 - report, never kill the stub
            pb_utils.Logger.log_error(f"[nemotron] request {live.user_id or key} failed: {e!r}")
            live.send(self, error=(f"generation failed: {e}", None), final=True)
            live.handle.cancel()
        if live.done:
            with self.lock:
                self.live.pop(key, None)
                self.active_metric.set(len(self.live))
            self._update_prefix_metrics()

    # -- prefix-cache metrics (Prometheus, on Triton's metrics port) --------------------------------------------
    _PREFIX_GAUGES = {
        "hit_rate": "prefix-cache hit rate: reused / eligible whole prompt blocks since start",
        "reused_tokens": "prompt tokens restored from the prefix cache since start",
        "reused_blocks": "prefix blocks reused since start",
        "inserted_blocks": "prefix blocks snapshotted since start",
        "evicted_blocks": "prefix blocks evicted (LRU) since start",
        "blocks": "prefix blocks cached now",
        "used_bytes": "bytes held by the prefix cache now",
        "budget_bytes": "the prefix cache's memory budget",
    }

    def _prefix_metrics(self, model_name: str) -> dict:
        out = {}
        for key, desc in self._PREFIX_GAUGES.items():
            fam = pb_utils.MetricFamily(
                name=f"nemotron_prefix_cache_{key}", description=desc, kind=pb_utils.MetricFamily.GAUGE
            )
            out[key] = (fam, fam.Metric(labels={"model": model_name}))
        return out

    def _update_prefix_metrics(self) -> None:
        metrics, prefix = self.prefix_metrics, self.engine.prefix
        if metrics is None or prefix is None:
            return
        rep = prefix.report()  # plain counters: a racing read is at most one request stale
        for key, (_, metric) in metrics.items():
            metric.set(float(rep[key]))

    def _send(
        self,
        sender,
        *,
        arrays: dict | None = None,
        error: tuple[str, str | None] | None = None,
        final: bool = False,
    ) -> bool:
        tensors = [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in (arrays or {}).items()]
        err = None
        if error is not None:
            msg, code = error
            err = (
                pb_utils.TritonError(msg, getattr(pb_utils.TritonError, code))
                if code
                else pb_utils.TritonError(msg)
            )
        try:
            sender.send(
                pb_utils.InferenceResponse(output_tensors=tensors, error=err), flags=_FINAL if final else 0
            )
            return True
        except Exception as e:  # noqa: BLE001 - the client went away; the caller cancels the request
            pb_utils.Logger.log_warn(f"[nemotron] could not send a response: {e}")
            return False

    # -- cancellation ------------------------------------------------------------------------------------------
    def _watch_cancellation(self) -> None:
        while self.running:
            time.sleep(_CANCEL_POLL_S)
            with self.lock:
                items = list(self.live.values())
            for live in items:
                if live.cancelled:
                    continue
                try:
                    gone = live.check_cancelled()
                except Exception:  # noqa: BLE001 - a finished sender; the sender thread cleans up
                    continue
                if gone:
                    live.cancelled = True
                    live.handle.cancel()

    def _stop_by_id(self, user_id: str) -> None:
        if not user_id:
            raise RequestError("a `stop` request needs the request id of the request to cancel")
        with self.lock:
            targets = [x for x in self.live.values() if x.user_id == user_id]
        for live in targets:
            live.cancelled = True
            live.handle.cancel()

    def finalize(self) -> None:
        self.running = False
        with self.lock:
            items = list(self.live.values())
        for live in items:
            live.handle.cancel()
        self.scheduler.shutdown()
        self.outbox.put(None)
        pb_utils.Logger.log_info("[nemotron] finalized")


def _is_user_error(e: Exception) -> bool:
    from trtllm_nemotron.errors import NemotronError

    return isinstance(e, NemotronError)
