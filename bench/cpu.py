"""CPU time of the processes under test (psutil), and waiting for a server to go idle.

CPU-ms per request is the honest cost figure on a shared 2-core machine: a latency can be
short because the request found the cores free, but the CPU a request burns in the model
server is what decides how many requests per second the machine can serve.
"""

from __future__ import annotations

import time

import psutil


class ProcessCpu:
    """User + system CPU seconds of one process and its children, read on demand."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)

    def seconds(self) -> float:
        total = 0.0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


def wait_until_idle(cpu: ProcessCpu, *, below_cores: float = 0.05, window_s: float = 0.3,
                    settle_windows: int = 2, timeout_s: float = 30.0) -> dict:
    """Return once the process used less than `below_cores` of a core over
    `settle_windows` consecutive windows of `window_s` (its queue has drained), or after
    `timeout_s`. Returns the wait and the last measured CPU rate (cores)."""
    started = time.perf_counter()
    quiet = 0
    rate = float("nan")
    while time.perf_counter() - started < timeout_s:
        before = cpu.seconds()
        time.sleep(window_s)
        rate = (cpu.seconds() - before) / window_s
        quiet = quiet + 1 if rate < below_cores else 0
        if quiet >= settle_windows:
            return {"idle": True, "waited_s": round(time.perf_counter() - started, 2),
                    "cores": round(rate, 3)}
    return {"idle": False, "waited_s": round(time.perf_counter() - started, 2),
            "cores": round(rate, 3)}
