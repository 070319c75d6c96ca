"""Continuous batching: one background thread stepping every active request of an `Engine`.

Loop (one iteration = `Engine.iterate`): admit waiting requests into free slots (FIFO), drop cancelled ones
(their slot is freed at once), run one iteration (one prefill chunk of the oldest prefilling request and one
batched decode step for every decoding request), route each event to its request's queue, free the slots of
finished requests. Requests therefore join and leave between steps, and prefill and decode interleave.

The scheduler drives the engine through its public API only (`new_request`, `try_admit`, `iterate`, `finish`;
`SchedulableEngine` below), which locks itself, so `Engine.generate` on another thread interleaves safely.

Delivery (what a consumer wakes up for): a request's events are merged and handed over on its first token,
its last, and every `stream_interval`-th iteration in between (TensorRT-LLM's `stream_interval`: a response at
the first decoding iteration, when finished, or when the iteration count is a multiple of the interval), so a
server can trade streaming granularity for fewer wake-ups and responses. A `deliver` callback, when given,
receives each iteration's deliveries as one list of (handle, event) on the scheduler's thread -- one wake-up
of one sender thread per iteration for every stream, instead of one per stream and token; the handles'
own queues (iteration, `result()`) are then not fed. Keep the callback short (hand the list to a queue).

`submit` validates and tokenizes on the caller's thread, so an over-long prompt or an invalid option raises
`RuntimeStateError` there. A `RequestHandle` is an iterator of `StreamEvent`s ending with one whose
`finish_reason` is set; `cancel()` ends it with "cancelled". An exception inside the loop ends every active
request with finish_reason "error" (and its message), and the loop keeps serving new requests.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from trtllm_nemotron.errors import RuntimeStateError
from trtllm_nemotron.runtime.requests import Completion, Request, StreamEvent
from trtllm_nemotron.runtime.sampling import SamplingParams

log = logging.getLogger(__name__)


class SchedulableEngine(Protocol):
    """What the scheduler needs of an engine (runtime/engine.py `Engine` provides it)."""

    def new_request(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None
    ) -> Request: ...

    def try_admit(self, req: Request) -> bool: ...

    def iterate(self, reqs: list[Request]) -> list[tuple[Request, StreamEvent]]: ...

    def finish(self, req: Request, reason: str, error: str | None = None) -> StreamEvent: ...


class RequestHandle:
    """Iterate for `StreamEvent`s; the last one has `finish_reason` and `stats`."""

    def __init__(self, sched: Scheduler, request: Request, stream_interval: int) -> None:
        self._sched = sched
        self.request = request
        self._events: queue.Queue[StreamEvent] = queue.Queue()
        self._done = False
        self.request_id = request.request_id
        self.stream_interval = stream_interval
        self._held: list[StreamEvent] = []  # produced, not yet delivered (scheduler thread only)
        self._iters = 0  # iterations that produced an event for this request

    def __iter__(self) -> RequestHandle:
        return self

    def __next__(self) -> StreamEvent:
        if self._done:
            raise StopIteration
        ev = self._events.get()
        if ev.finish_reason is not None:
            self._done = True
        return ev

    def next_events(self) -> list[StreamEvent]:
        """Block for the next event, then also take every event already queued behind it (up to and including
        a final one): a consumer slower than the engine -- a server sending one response per call -- catches up
        in one step instead of falling further behind. Raises StopIteration after the final event."""
        if self._done:
            raise StopIteration
        evs = [self._events.get()]
        while evs[-1].finish_reason is None:
            try:
                evs.append(self._events.get_nowait())
            except queue.Empty:
                break
        if evs[-1].finish_reason is not None:
            self._done = True
        return evs

    def cancel(self) -> None:
        """Stop generating; the slot is freed and the iteration ends with finish_reason "cancelled"."""
        self._sched._cancel(self)

    def result(self) -> Completion:
        """Drain the stream into a `Completion`."""
        text, ids, last = [], [], None
        for ev in self:
            text.append(ev.text)
            ids += ev.token_ids
            last = ev
        if last is None or last.finish_reason is None:
            raise RuntimeStateError(f"request {self.request_id} ended without a final event")
        return Completion("".join(text), ids, last.finish_reason, last.stats or {})

    @property
    def finished(self) -> bool:
        return self.request.finished

    @property
    def num_prompt_tokens(self) -> int:
        """The prompt's token count (known from `submit`, which tokenizes)."""
        return len(self.request.prompt_ids)


Deliver = Callable[[list[tuple[RequestHandle, StreamEvent]]], None]


def merge_events(evs: list[StreamEvent]) -> StreamEvent:
    """Consecutive events of one request as one (text and token ids concatenated, the last one's end)."""
    if len(evs) == 1:
        return evs[0]
    last = evs[-1]
    ids = [t for e in evs for t in e.token_ids]
    return StreamEvent("".join(e.text for e in evs), ids, last.finish_reason, last.stats, last.error)


def _check_interval(n: int) -> int:
    if not isinstance(n, int) or n < 1:
        raise RuntimeStateError(f"stream_interval must be an integer >= 1, got {n!r}")
    return n


class Scheduler:
    def __init__(
        self,
        engine: SchedulableEngine,
        *,
        idle_wait_s: float = 0.05,
        stream_interval: int = 1,
        deliver: Deliver | None = None,
    ) -> None:
        self.engine = engine
        self.stream_interval = _check_interval(stream_interval)
        self._deliver = deliver
        self._cv = threading.Condition()
        self._waiting: deque[RequestHandle] = deque()
        self._active: list[RequestHandle] = []
        self._cancel_set: set[RequestHandle] = set()
        self._stop = False
        self._idle_wait_s = idle_wait_s
        self.iterations = 0
        self._thread = threading.Thread(target=self._loop, name="trtllm-nemotron-scheduler", daemon=True)
        self._thread.start()

    # ---- public
    def submit(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        stream_interval: int | None = None,
    ) -> RequestHandle:
        """Queue a request; `stream_interval` overrides the scheduler's for this request."""
        if self._stop:
            raise RuntimeStateError(
                "the scheduler has been shut down; create a new one with engine.scheduler()"
            )
        interval = self.stream_interval if stream_interval is None else _check_interval(stream_interval)
        req = self.engine.new_request(prompt, params or SamplingParams(), request_id)
        h = RequestHandle(self, req, interval)
        with self._cv:
            self._waiting.append(h)
            self._cv.notify()
        return h

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop; requests still running or waiting end with "cancelled"."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)

    @property
    def num_active(self) -> int:
        return len(self._active)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ---- internals
    def _cancel(self, h: RequestHandle) -> None:
        with self._cv:
            if not h.request.finished:
                self._cancel_set.add(h)
                self._cv.notify()

    def _end(self, h: RequestHandle, reason: str, error: str | None = None) -> None:
        h._held.append(self.engine.finish(h.request, reason, error))
        self._send([(h, merge_events(h._held))])
        h._held = []

    def _send(self, out: list[tuple[RequestHandle, StreamEvent]]) -> None:
        if not out:
            return
        if self._deliver is not None:
            try:
                self._deliver(out)
            except Exception:  # noqa: BLE001 - a consumer's bug must not stop the loop
                log.exception("scheduler deliver callback failed")
            return
        for h, ev in out:
            h._events.put(ev)

    def _route(self, events: list[tuple[Request, StreamEvent]], by_req: dict[int, RequestHandle]) -> None:
        """Hold each request's new events; deliver (merged) at its first token, its end and every
        stream_interval-th iteration."""
        out = []
        for req, ev in events:
            h = by_req[id(req)]
            h._held.append(ev)
            h._iters += 1
            if ev.finish_reason is not None or h._iters == 1 or h._iters % h.stream_interval == 0:
                out.append((h, merge_events(h._held)))
                h._held = []
        self._send(out)

    def _loop(self) -> None:
        eng = self.engine
        while True:
            with self._cv:
                while not (self._stop or self._waiting or self._active or self._cancel_set):
                    self._cv.wait(self._idle_wait_s)
                if self._stop:
                    for h in list(self._active) + list(self._waiting):
                        self._end(h, "cancelled")
                    self._active.clear()
                    self._waiting.clear()
                    return
                cancels, self._cancel_set = self._cancel_set, set()
                for h in cancels:
                    if h in self._waiting:
                        self._waiting.remove(h)
                    if h in self._active:
                        self._active.remove(h)
                    if not h.request.finished:
                        self._end(h, "cancelled")
                while self._waiting and eng.try_admit(self._waiting[0].request):
                    self._active.append(self._waiting.popleft())
                if not self._active:  # waiting for a slot held outside this scheduler: do not spin
                    self._cv.wait(self._idle_wait_s)
                    continue
            by_req = {id(h.request): h for h in self._active}
            try:
                events = eng.iterate([h.request for h in self._active])
            except Exception as e:  # a bug or an OOM: fail the active requests, keep serving
                log.exception("scheduler iteration failed")
                for h in self._active:
                    self._end(h, "error", f"{type(e).__name__}: {e}")
                self._active.clear()
                continue
            self.iterations += 1
            self._route(events, by_req)
            if any(h.request.finished for h in self._active):
                self._active = [h for h in self._active if not h.request.finished]
