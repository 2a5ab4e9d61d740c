"""Open-loop load generation: requests start on a fixed schedule, whatever the answers do.

A closed loop (send, wait, send) slows down with the server and hides queueing
("coordinated omission"). Here request i is *due* at t0 + i / qps; a pool of worker threads
picks up due requests and latency is measured from the due time, so time spent waiting for a
free worker or behind a slow answer counts against the system under test. The generator runs
in its own process so that its CPU use is not charged to the client under test's GIL.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    qps_target: float
    duration_s: float
    sent: int = 0
    completed: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    qps_achieved: float = 0.0


def run_open_loop(call: Callable[[int], None], qps: float, duration_s: float,
                  workers: int = 32, timeout_s: float = 5.0) -> LoadResult:
    """Drive `call(i)` at `qps` for `duration_s`; a call that raises counts as an error.

    Requests still queued when the run is `timeout_s` past its end are counted as errors
    (the system could not keep up), so an overloaded cell ends in bounded time.
    """
    total = max(1, int(round(qps * duration_s)))
    due: queue.Queue = queue.Queue()
    result = LoadResult(qps_target=qps, duration_s=duration_s)
    lock = threading.Lock()
    deadline = [float("inf")]
    finished_at = [0.0]

    def worker() -> None:
        while True:
            item = due.get()
            if item is None:
                return
            i, due_at = item
            if time.perf_counter() > deadline[0]:
                with lock:
                    result.errors += 1
                continue
            try:
                call(i)
                ok, err = True, None
            except Exception as exc:  # the load test counts failures, it must not stop
                ok, err = False, f"{type(exc).__name__}: {exc}"
            done = time.perf_counter()
            with lock:
                if ok:
                    result.completed += 1
                    result.latencies_s.append(done - due_at)
                else:
                    result.errors += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(err[:300])
                finished_at[0] = max(finished_at[0], done)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    t0 = time.perf_counter() + 0.05
    for i in range(total):
        due_at = t0 + i / qps
        delay = due_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        due.put((i, due_at))
        result.sent += 1
    deadline[0] = t0 + duration_s + timeout_s
    for _ in threads:
        due.put(None)
    for t in threads:
        t.join(timeout=timeout_s + duration_s + 5)
    span = max(finished_at[0] - t0, duration_s) if result.completed else duration_s
    result.qps_achieved = result.completed / span
    return result


def _child(factory, factory_args, qps, duration_s, workers, timeout_s, warmup, out):
    try:
        call = factory(*factory_args)
        for i in range(warmup):
            call(i)
        res = run_open_loop(call, qps, duration_s, workers=workers, timeout_s=timeout_s)
        out.put(("ok", res))
    except Exception as exc:  # report set-up failures to the parent instead of hanging
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def run_in_process(factory: Callable, factory_args: tuple, qps: float, duration_s: float,
                   workers: int = 32, timeout_s: float = 5.0, warmup: int = 20) -> LoadResult:
    """Run the open loop in a fresh (spawned) process. `factory(*factory_args)` builds the
    per-request callable there (client objects, channels and pools are per process)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(factory, factory_args, qps, duration_s, workers,
                                            timeout_s, warmup, out), daemon=True)
    proc.start()
    try:
        status, payload = out.get(timeout=duration_s + timeout_s + 180)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        raise RuntimeError(f"load generator process failed: {payload}")
    return payload
