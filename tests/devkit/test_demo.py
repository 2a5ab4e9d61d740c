"""`make demo` end to end, at smoke-test size: every step runs for real (Redis, training,
export, model server, Beam backfill and streaming, live events, both architectures) and the
demo must leave no process behind."""

import os
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.slow


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_demo_runs_end_to_end_and_stops_everything(tmp_path):
    before = _descendants()
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.demo", "--workdir", str(tmp_path / "demo"), "--users", "120",
         "--size", "tiny", "--live_users", "1", "--burst", "5", "--requests", "20"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for marker in ("Held-out AUC", "live clicks", "A: behaviours + full", "B: state + head",
                   "nothing left running"):
        assert marker in out, f"{marker!r} missing from demo output:\n{out[-4000:]}"
    assert "absl::InitializeLog" not in proc.stdout
    assert _descendants() <= before


def test_demo_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "devkit.demo", "--users", "3",
                           "--workdir", str(tmp_path / "d")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--users must be >= 50" in proc.stderr
