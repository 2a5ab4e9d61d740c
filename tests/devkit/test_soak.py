"""`make soak` at its short length: the real system (durable Redis, stream job, model server,
client) under load while every fault is injected once (poison burst, kill -9 of the stream
job and of Redis, SIGTERM of the model server, roll-out and roll-back); no event may be lost
or applied twice, and the soak must say so in its one summary line."""

import os
import re
import subprocess
import sys

import pytest

SUMMARY = re.compile(r"^soak: (\d+) events, (\d+) requests, (\d+) faults, lost (\d+), "
                     r"double-applied (\d+), failed requests (\d+) \(([\d.]+)%\), degraded (\d+)$",
                     re.MULTILINE)


@pytest.mark.slow
def test_soak_loses_no_event_and_applies_none_twice(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.soak", "--seconds", "60", "--rate", "50", "--qps", "10",
         "--users", "100", "--workdir", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=1500,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    out = proc.stdout + proc.stderr
    summary = SUMMARY.search(proc.stdout)
    assert summary is not None, f"no summary line in the soak's output:\n{out[-6000:]}"
    events, requests, faults, lost, double = map(int, summary.groups()[:5])
    assert (lost, double) == (0, 0), out[-6000:]
    assert events > 0 and requests > 0 and faults == 6, summary.group(0)
    for fault in ("poison burst", "kill -9 stream job", "kill -9 Redis", "SIGTERM model server",
                  "roll-out v1 -> v2", "roll-back v2 -> v1"):
        assert re.search(rf"^{re.escape(fault)} .*after [\d.]+ s", proc.stdout, re.MULTILINE), (
            f"no recovery time for {fault!r}:\n{out[-6000:]}")
    assert proc.returncode == 0, out[-6000:]
