"""The open loop itself (in this process, with a synthetic call): latencies run from the
scheduled time, and a call that never returns is counted as abandoned."""

import threading
import time

from bench.latency import ABANDONED, ERROR, OK, TIMEOUT
from bench.loadgen import run_open_loop


def test_every_scheduled_request_ends_counted():
    release = threading.Event()

    def call(i, remaining_ms):
        if i == 3:
            raise RuntimeError("boom")
        if i == 5:
            release.wait(5)  # hangs past the cell: abandoned
        if i == 7:
            time.sleep(0.25)  # answers after its timeout

    try:
        result = run_open_loop(call, qps=50, duration_s=0.2, timeout_s=0.15, workers=4)
    finally:
        release.set()
    assert len(result.outcomes) == 10
    assert result.outcomes[3] == ERROR
    assert result.outcomes[5] == ABANDONED and result.latencies_s[5] >= 0.15
    assert result.outcomes[7] == TIMEOUT and result.latencies_s[7] >= 0.25
    assert [o for i, o in enumerate(result.outcomes) if i not in (3, 5, 7)] == [OK] * 7
    assert result.generator_cpu_s >= 0


def test_latency_runs_from_the_scheduled_time_not_the_send():
    # one worker and 20 ms calls at 100 QPS: requests queue behind each other, and the
    # queueing shows in their latencies although each call itself takes 20 ms
    result = run_open_loop(lambda i, ms: time.sleep(0.02), qps=100, duration_s=0.1,
                           timeout_s=2.0, workers=1)
    assert result.outcomes == [OK] * 10
    # 10 x 20 ms of work in one line; the last one is scheduled 90 ms in: >= 110 ms late
    assert result.latencies_s[-1] >= 0.105
