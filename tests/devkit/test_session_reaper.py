"""tests/fixtures_processes.py: a test that pytest-timeout ends while its server runs does not
leave that server running after the session (the servers live in sessions of their own, so
nothing else would stop them)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]

TIMED_OUT_TEST = """
    import pathlib, sys, time

    import pytest

    from devkit.processes import ChildProcess

    @pytest.mark.timeout(2)
    def test_ended_by_the_timeout(tmp_path):
        server = ChildProcess([sys.executable, "-c", "import time; time.sleep(600)"],
                              name="left-behind server")
        server.start()
        pathlib.Path({pid_file!r}).write_text(str(server.pid))
        time.sleep(600)  # pytest-timeout fails the test here; server.stop() is never reached
        server.stop()
    """


def test_the_session_stops_what_a_timed_out_test_left_running(tmp_path):
    pid_file = tmp_path / "server.pid"
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(TIMED_OUT_TEST.format(pid_file=str(pid_file))))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.fixtures_processes", str(tmp_path / "test_inner.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
            str(REPO), os.environ.get("PYTHONPATH")]))))
    out = proc.stdout + proc.stderr
    pid = int(pid_file.read_text())
    left = [p for p in psutil.process_iter(["pid"]) if p.pid == pid and p.status() != "zombie"]
    for server in left:  # clean up if the reaper failed
        server.kill()
    assert "1 failed" in out and "Timeout" in out, out[-3000:]
    assert left == [], out[-3000:]
    assert "stopped 1 process(es) the tests left running" in out, out[-3000:]
