"""`make demo` end to end, at smoke-test size: every step runs for real (Redis, training,
export, model server, Beam backfill and streaming, live events, both architectures) and the
demo must leave no process behind. Here on synthetic data; on a behaviour log in Taobao's
format: test_demo_taobao.py (a file of its own, so the two demo runs can go to the two
pytest-xdist workers)."""

import os
import subprocess
import sys
import uuid

import psutil
import pytest

from tests.fixtures_processes import processes_with_env

TOKEN_VAR = "UIC_DEMO_TEST_TOKEN"


def processes_with_token(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries `TOKEN_VAR=token`: everything the demo
    started, however deep, even after it was re-parented (every child inherits the demo's
    environment, and a child in a session of its own is not a descendant any more once the
    demo has exited)."""
    return processes_with_env(TOKEN_VAR, token)


def test_the_leftover_check_sees_a_detached_grandchild():
    """The check used below must be able to fail: a process that left its parent's session
    and outlived it is found."""
    token = uuid.uuid4().hex
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                env=dict(os.environ, **{TOKEN_VAR: token}),
                                start_new_session=True)
    try:
        assert [p.pid for p in processes_with_token(token)] == [leftover.pid]
    finally:
        leftover.kill()
        leftover.wait()
    assert processes_with_token(token) == []


@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_everything(tmp_path):
    token = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.demo", "--workdir", str(tmp_path / "demo"), "--users", "120",
         "--size", "tiny", "--live_users", "1", "--burst", "5", "--requests", "20"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **{TOKEN_VAR: token}))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for marker in ("Held-out AUC", "is reading (consumer group uic-dien)",
                   "is reading (consumer group uic-mimn)", "live clicks", "A: behaviours + full",
                   "B: state + head", "nothing left running"):
        assert marker in out, f"{marker!r} missing from demo output:\n{out[-4000:]}"
    assert "absl::InitializeLog" not in proc.stdout
    left = processes_with_token(token)
    assert left == [], left


def test_demo_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "devkit.demo", "--users", "3",
                           "--workdir", str(tmp_path / "d")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--users must be >= 50" in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "devkit.demo", "--data",
                              str(tmp_path / "none.csv"), "--workdir", str(tmp_path / "d")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
