"""Open-loop load generation: requests start on a fixed schedule, whatever the answers do.

A closed loop (send, wait, send) slows down with the server and hides queueing
("coordinated omission"). Here request i is *scheduled* at t0 + i / qps; a pool of worker
threads picks up due requests, and every latency is measured from the scheduled time, so
waiting for a free worker or behind a slow answer counts against the system under test.

Where it runs, honestly: the generator lives in its own process (`LoadGenerator`, spawned
once and reused for every cell), away from the benchmark driver and the model server. The
client under test (`client.Scorer`) must live in that same process, because the generator
calls it: the scheduler, the worker threads and the client share one interpreter and its
GIL. So the generator's own CPU time is measured per cell (`getrusage` of that process)
and reported beside the results (`generator_cpu_ms_per_request`), as is how late workers
picked up their requests (`send_lag_p99_ms`): a generator that cannot keep up shows there,
and its lateness still counts in the latencies.

Every scheduled request ends counted (bench.latency): ok, timeout (answered late, or not
picked up before its timeout), error, or abandoned (still in flight when the cell closes,
`timeout_s` plus a short grace after the last scheduled send).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.latency import ABANDONED, ERROR, OK, TIMEOUT, percentiles_ms

CLOSE_GRACE_S = 0.25  # after the last request's timeout, before in-flight ones are abandoned


@dataclass
class OpenLoopResult:
    """What happened to each scheduled request (index = request number)."""

    qps: float
    window_s: float  # scheduled requests span [t0, t0 + window_s)
    timeout_s: float
    outcomes: list[str]
    latencies_s: list[float]
    send_lag_p99_ms: float
    generator_cpu_s: float
    error_samples: list[str] = field(default_factory=list)


class _InFlight:
    """Calls started and not yet returned, across cells (a cell's abandoned calls may still
    be running when the next cell is asked for; it waits for them)."""

    def __init__(self):
        self.count = 0
        self.cond = threading.Condition()

    def add(self, n: int) -> None:
        with self.cond:
            self.count += n
            self.cond.notify_all()

    def wait_zero(self, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count == 0, timeout=timeout_s)


IN_FLIGHT = _InFlight()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_open_loop(call: Callable[[int, float], None], qps: float, duration_s: float,
                  timeout_s: float, workers: int = 64) -> OpenLoopResult:
    """Drive `call(i, remaining_ms)` at `qps` for `duration_s`. `remaining_ms` is what is
    left of request i's timeout when a worker starts it (pass it on as the call's deadline).
    A call that raises is an error, or a timeout if the timeout had passed by then."""
    if qps <= 0 or duration_s <= 0 or timeout_s <= 0:
        raise ValueError("qps, duration_s and timeout_s must be positive")
    total = max(1, int(round(qps * duration_s)))
    outcomes: list[str | None] = [None] * total
    latencies: list[float] = [0.0] * total
    lags: list[float] = []
    errors: list[str] = []
    lock = threading.Condition()
    resolved = [0]
    due: queue.SimpleQueue = queue.SimpleQueue()

    def record(i: int, outcome: str, latency_s: float) -> None:
        with lock:
            if outcomes[i] is None:  # the first word stands (an abandoned call stays so)
                outcomes[i], latencies[i] = outcome, latency_s
                resolved[0] += 1
                lock.notify_all()

    def worker() -> None:
        while (item := due.get()) is not None:
            i, scheduled_at = item
            started = time.perf_counter()
            lags.append(started - scheduled_at)
            remaining_s = scheduled_at + timeout_s - started
            if remaining_s <= 0:
                record(i, TIMEOUT, started - scheduled_at)
                continue
            IN_FLIGHT.add(1)
            try:
                call(i, remaining_s * 1e3)
                failure = None
            except Exception as exc:  # the load test counts failures, it must not stop
                failure = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                IN_FLIGHT.add(-1)
            latency = time.perf_counter() - scheduled_at
            if latency > timeout_s:
                record(i, TIMEOUT, latency)
            elif failure is not None:
                record(i, ERROR, latency)
                if len(errors) < 5:
                    errors.append(failure)
            else:
                record(i, OK, latency)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    cpu0 = _cpu_s()
    t0 = time.perf_counter() + 0.02
    for i in range(total):
        scheduled_at = t0 + i / qps
        delay = scheduled_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        due.put((i, scheduled_at))
    close_at = t0 + (total - 1) / qps + timeout_s + CLOSE_GRACE_S
    with lock:
        lock.wait_for(lambda: resolved[0] == total,
                      timeout=max(0.0, close_at - time.perf_counter()))
    now = time.perf_counter()
    for i in range(total):  # whatever is still out is abandoned, and counted
        record(i, ABANDONED, now - (t0 + i / qps))
    generator_cpu = _cpu_s() - cpu0
    for _ in threads:
        due.put(None)
    lag_ms = percentiles_ms(lags)["p99_ms"] if lags else float("nan")
    return OpenLoopResult(qps=qps, window_s=total / qps, timeout_s=timeout_s,
                          outcomes=list(outcomes), latencies_s=latencies,
                          send_lag_p99_ms=lag_ms, generator_cpu_s=generator_cpu,
                          error_samples=errors)


def _generator_main(conn, factory: Callable) -> None:
    """The generator process: build and warm one callable per key, then run cells on it."""
    calls: dict = {}
    while (message := conn.recv()) is not None:
        try:
            if message[0] == "prepare":
                _, key, factory_args, warmup = message
                if key not in calls:
                    calls[key] = factory(*factory_args)
                    for i in range(warmup):
                        calls[key](i, 10_000.0)
                conn.send(("ok", None))
            else:
                _, key, qps, duration_s, timeout_s = message
                IN_FLIGHT.wait_zero(timeout_s + 5.0)
                conn.send(("ok", run_open_loop(calls[key], qps, duration_s, timeout_s)))
        except Exception:  # report to the parent instead of hanging it
            conn.send(("error", traceback.format_exc()))


class LoadGenerator:
    """The open-loop generator in one spawned process, reused for every cell.

    `factory(*factory_args)` is called there, once per `key` (`prepare`), and returns the
    per-request callable `call(i, remaining_ms)`; `factory` must be importable (spawn
    pickles it by name).
    """

    def __init__(self, factory: Callable):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_generator_main, args=(child, factory), daemon=True,
                                   name="bench-load-generator")

    def __enter__(self) -> LoadGenerator:
        self.process.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def prepare(self, key, factory_args: tuple, warmup: int = 20,
                timeout_s: float = 300.0) -> None:
        """Build the callable for `key` in the generator process and warm it up (once per
        key), so that no set-up cost falls inside a measured cell."""
        self._ask(("prepare", key, factory_args, warmup), timeout_s)

    def run(self, key, qps: float, duration_s: float, timeout_s: float) -> OpenLoopResult:
        """One open-loop cell on the prepared callable `key`."""
        return self._ask(("run", key, qps, duration_s, timeout_s), duration_s + 2 * timeout_s + 30)

    def _ask(self, message: tuple, timeout_s: float):
        self._conn.send(message)
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"the load generator (pid {self.pid}) did not answer within "
                               f"{timeout_s:.0f} s; see its traceback above, if any")
        status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"load generator process failed:\n{payload}")
        return payload

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
