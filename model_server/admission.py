"""Admission control per model, and the in-flight count the shutdown drain waits for.

Each model has `max_concurrent` slots for requests that run its graph (or wait in its batch
queue) and a queue of at most `max_queued` requests waiting for a slot. A request beyond
both is refused at once with RESOURCE_EXHAUSTED (HTTP 503), so overload sheds instead of
piling up latency; a queued request that reaches its deadline gets DEADLINE_EXCEEDED. Once
draining starts, new requests get UNAVAILABLE while admitted ones run to the end.
Flags: docs/model_server.md, 'Overload and shutdown'.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

from model_server.errors import ServingError


class Admission:
    """Slots and bounded queues per model name, shared by the gRPC and REST front ends."""

    def __init__(self, max_concurrent: int, max_queued: int):
        self.max_concurrent = max(max_concurrent, 1)
        self.max_queued = max(max_queued, 0)
        self._cond = threading.Condition()
        self._running: collections.Counter[str] = collections.Counter()
        self._queued: collections.Counter[str] = collections.Counter()
        self._in_flight = 0
        self.draining = False

    @contextlib.contextmanager
    def slot(self, model: str, timeout: float | None):
        """Hold one of `model`'s slots for the body; wait at most `timeout` s for it."""
        self._acquire(model, timeout)
        try:
            yield
        finally:
            with self._cond:
                self._running[model] -= 1
                self._in_flight -= 1
                self._cond.notify_all()

    def _acquire(self, model: str, timeout: float | None) -> None:
        with self._cond:
            if self.draining:
                raise ServingError("UNAVAILABLE", "the server is shutting down; send the "
                                   "request to another replica")
            if self._running[model] >= self.max_concurrent:
                if self._queued[model] >= self.max_queued:
                    raise ServingError(
                        "RESOURCE_EXHAUSTED",
                        f"model {model} is overloaded: {self._running[model]} requests running "
                        f"and {self._queued[model]} queued (--max_concurrent_requests_per_model"
                        f", --max_queued_requests_per_model); retry later or add replicas",
                        http_status=503)
                self._wait(model, timeout)
            self._running[model] += 1
            self._in_flight += 1

    def _wait(self, model: str, timeout: float | None) -> None:
        """Queue for a slot of `model` (condition held)."""
        self._queued[model] += 1
        self._in_flight += 1  # a queued request is in flight for the drain
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self._running[model] >= self.max_concurrent:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ServingError("DEADLINE_EXCEEDED", f"Deadline exceeded while waiting "
                                       f"for a free slot of model {model}")
                self._cond.wait(left)
        finally:
            self._queued[model] -= 1
            self._in_flight -= 1

    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def drain(self, timeout: float) -> bool:
        """Refuse new requests; wait up to `timeout` s for admitted ones. True if all ended."""
        with self._cond:
            self.draining = True
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)
