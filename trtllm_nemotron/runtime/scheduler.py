"""Continuous batching: one background thread stepping every active request of an `Engine`.

Loop (one iteration = `Engine.iterate`): admit waiting requests into free slots (FIFO), drop cancelled ones
(their slot is freed at once), run one iteration (one prefill chunk of the oldest prefilling request and one
batched decode step for every decoding request), route each event to its request's queue, free the slots of
finished requests. Requests therefore join and leave between steps, and prefill and decode interleave.

The scheduler drives the engine through its public API only (`new_request`, `try_admit`, `iterate`, `finish`;
`SchedulableEngine` below), which locks itself, so `Engine.generate` on another thread interleaves safely.

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

    def __init__(self, sched: Scheduler, request: Request) -> None:
        self._sched = sched
        self.request = request
        self._events: queue.Queue[StreamEvent] = queue.Queue()
        self._done = False
        self.request_id = request.request_id

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


class Scheduler:
    def __init__(self, engine: SchedulableEngine, *, idle_wait_s: float = 0.05) -> None:
        self.engine = engine
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
        self, prompt: str | list[int], params: SamplingParams | None = None, *, request_id: str | None = None
    ) -> RequestHandle:
        if self._stop:
            raise RuntimeStateError(
                "the scheduler has been shut down; create a new one with engine.scheduler()"
            )
        req = self.engine.new_request(prompt, params or SamplingParams(), request_id)
        h = RequestHandle(self, req)
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
        h._events.put(self.engine.finish(h.request, reason, error))

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
            for req, ev in events:
                by_req[id(req)]._events.put(ev)
            self._active = [h for h in self._active if not h.request.finished]
