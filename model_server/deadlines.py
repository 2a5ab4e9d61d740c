"""Graph calls that end at their request's deadline.

TF Serving passes the deadline to the session run, which cancels the step when it passes.
Here a call made with a timeout runs under a TF CancellationManager; one watcher thread
cancels it at the deadline, TF aborts the running ops (CancelledError), and the call reports
DEADLINE_EXCEEDED, so an over-deadline request frees its slot instead of running on.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time


class _Timer:
    __slots__ = ("at", "manager", "fired", "done")

    def __init__(self, at: float, manager):
        self.at = at
        self.manager = manager
        self.fired = False
        self.done = False


class _Watcher:
    """One thread that cancels the managers whose deadline has passed."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, timer: _Timer) -> None:
        with self._cond:
            heapq.heappush(self._heap, (timer.at, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadlines",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, timer: _Timer) -> None:
        with self._cond:
            timer.done = True  # dropped lazily when it reaches the top of the heap

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                at, _, timer = self._heap[0]
                left = at - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                timer.fired = True
                timer.manager.start_cancel()


_WATCHER = _Watcher()


@contextlib.contextmanager
def cancel_at_deadline(timeout: float | None):
    """TF ops run in the body are cancelled after `timeout` s; yields the timer (its
    `fired` says whether the deadline passed), or None without a timeout."""
    if timeout is None:
        yield None
        return
    from tensorflow.python.eager import cancellation

    timer = _Timer(time.monotonic() + max(timeout, 0.0), cancellation.CancellationManager())
    _WATCHER.add(timer)
    try:
        with cancellation.CancellationManagerContext(timer.manager):
            yield timer
    finally:
        _WATCHER.remove(timer)
