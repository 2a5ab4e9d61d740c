"""Keeping the stream job alive through Redis outages, and stopping it cleanly on SIGTERM.

* `call_through_outages(fn, what)` runs one Redis step and, while Redis is unavailable
  (`uic.store.StoreUnavailable`: down, restarting, or silent past the socket timeout),
  retries it with exponential back-off from 0.1 s to 5 s. Every step of the job is safe to
  redo: states are written by compare-and-set, the behaviour log is idempotent and an entry
  is acknowledged only after its writes (docs/beam_jobs.md, "Supervision").
* An outage is logged once when it starts and once, with its duration, when it ends, however
  many DoFns hit it; each ended outage counts as one reconnect.
* `request_stop()` (the job's SIGTERM handler) sets a process-wide flag: the reader stops
  polling, the batch in hand is written and acknowledged, the pipeline ends and the job
  exits 0. A step waiting out an outage when the stop comes gives up with `Abandoned`: its
  entries stay pending and the next run re-reads them.

The flag and the outage record are per process: they reach the DoFns of the in-process
runner (FnApiRunner, the local default). Distributed runners stop a job with their own drain
(`truncate` in `beam_jobs.redis_streams`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from beam_jobs import live_metrics
from beam_jobs.metrics import Stream as M
from uic.store import StoreUnavailable

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0

_stop = threading.Event()


class Abandoned(Exception):
    """A step gave up waiting for Redis because the job is stopping."""


def request_stop(*_signal_args) -> None:
    """Ask the job to drain and stop (usable as a signal handler)."""
    if not _stop.is_set():
        _LOG.warning("stop requested: finishing the batch in hand, then exiting")
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def reset() -> None:
    """Forget a previous run's stop request (a new run in the same process)."""
    _stop.clear()


class _Outage:
    """The one current outage of this process, shared by every caller."""

    def __init__(self):
        self._lock = threading.Lock()
        self.started: float | None = None
        self.failures = 0

    def failed(self, what: str, err: StoreUnavailable) -> None:
        with self._lock:
            self.failures += 1
            if self.started is None:
                self.started = time.monotonic()
                _LOG.warning("Redis unavailable during %s: %s; retrying with back-off up to "
                             "%.0f s", what, err, MAX_BACKOFF_S)

    def recovered(self) -> None:
        """Record a success; the one that ends an outage logs it and counts a reconnect."""
        if self.started is None:  # the common case, without the lock
            return
        with self._lock:
            if self.started is None:
                return
            seconds, failures = time.monotonic() - self.started, self.failures
            self.started, self.failures = None, 0
        _LOG.warning("Redis is back after an outage of %.1f s (%d failed attempts)", seconds,
                     failures)
        M.reconnects.inc()
        live_metrics.RECONNECTS.inc()


_outage = _Outage()


def call_through_outages(fn: Callable[[], T], what: str, *,
                         on_recovery: Callable[[], None] | None = None) -> T:
    """fn() retried with exponential back-off (0.1 s .. 5 s) while Redis is unavailable.
    Raises `Abandoned` if a stop is requested while waiting; any other error propagates.
    `on_recovery` runs after a success that followed a failure of this call."""
    delay = FIRST_BACKOFF_S
    failed = False
    while True:
        try:
            result = fn()
        except StoreUnavailable as err:
            failed = True
            _outage.failed(what, err)
            if _stop.wait(delay):
                raise Abandoned(f"stopping while Redis is unavailable ({what})") from err
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        _outage.recovered()
        if failed and on_recovery is not None:
            on_recovery()
        return result
