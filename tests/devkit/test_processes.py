"""devkit/processes.py and devkit/ports.py: the one child-process supervision of the harness
(redis-server, the model server and the demo's stream jobs all run through it), the one
free-port helper, and the demo's wait for the stream jobs' consumer groups."""

from __future__ import annotations

import re
import signal
import socket
import sys
import textwrap

import psutil
import pytest

from devkit.demo import consumer_group_exists, wait_for_consumer_group
from devkit.ports import HOST, free_port, port_is_free
from devkit.processes import ChildProcess, ProcessStartError


def python_child(code: str, tmp_path, **kwargs) -> ChildProcess:
    """A child running `code` (dedented) with `python -u -c`, logging to tmp_path/child.log."""
    return ChildProcess([sys.executable, "-u", "-c", textwrap.dedent(code)], name="test child",
                        log_path=tmp_path / "child.log", **kwargs)


def logged(child: ChildProcess, text: str):
    return lambda: text in child.log_tail()


def gone(pid: int) -> bool:
    """True when no live process has the pid (a zombie waiting for init counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_start_waits_for_the_ready_condition_and_keeps_the_log(tmp_path):
    flag = tmp_path / "flag"
    child = python_child(f"""
        import pathlib, sys, time
        print("to stdout"); print("to stderr", file=sys.stderr)
        time.sleep(0.3)
        pathlib.Path({str(flag)!r}).touch()
        time.sleep(600)
        """, tmp_path)
    with child:
        pass  # a context manager: starts (no readiness wait) and stops
    assert not child.running
    child.start(ready=flag.exists, waiting_for="the flag file", timeout=60)
    try:
        assert flag.exists() and child.running
        assert "to stdout" in child.log_tail() and "to stderr" in child.log_tail()
    finally:
        child.stop()
    assert gone(child.pid)


def test_a_child_that_exits_during_start_up_is_reported_with_its_log(tmp_path):
    child = python_child("""
        import sys
        print("cannot open the config file", file=sys.stderr)
        sys.exit(3)
        """, tmp_path)
    with pytest.raises(ProcessStartError, match=r"(?s)test child exited with code 3 while "
                       r"waiting for the answer.*cannot open the config file"):
        child.start(ready=lambda: False, waiting_for="the answer", timeout=60)


def test_a_child_that_never_gets_ready_times_out_and_is_stopped(tmp_path):
    child = python_child("""
        import time
        print("still loading")
        time.sleep(600)
        """, tmp_path)
    with pytest.raises(ProcessStartError, match=r"(?s)not ready after 0.5 s \(waiting for "
                       r"the models\).*still loading"):
        child.start(ready=lambda: False, waiting_for=lambda: "the models", timeout=0.5)
    assert not child.running and gone(child.pid)


def test_a_missing_program_is_a_clear_error(tmp_path):
    child = ChildProcess([str(tmp_path / "no-such-program")], log_path=tmp_path / "x.log")
    with pytest.raises(ProcessStartError, match="cannot start no-such-program"):
        child.start()


def test_stop_sends_the_stop_signal_and_the_child_exits_cleanly(tmp_path):
    child = python_child("""
        import signal, sys, time
        def bye(signum, frame):
            print("got", signal.Signals(signum).name)
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("ready")
        time.sleep(600)
        """, tmp_path)
    child.start(ready=logged(child, "ready"), timeout=60)
    assert child.stop(grace_s=60) == 0
    assert "got SIGTERM" in child.log_tail()


@pytest.mark.parametrize("parent_sigint", [signal.default_int_handler, signal.SIG_IGN],
                         ids=["foreground", "started-in-the-background"])
def test_another_stop_signal_reaches_a_ctrl_c_handler(tmp_path, parent_sigint):
    """Also when this process ignores SIGINT, as a shell's background job (`make test &`)
    does: the child must still get Python's Ctrl-C handler."""
    previous = signal.signal(signal.SIGINT, parent_sigint)
    try:
        child = python_child("""
            import sys, time
            print("ready")
            try:
                time.sleep(600)
            except KeyboardInterrupt:
                print("interrupted")
                sys.exit(130)
            """, tmp_path, stop_signal=signal.SIGINT)
        child.start(ready=logged(child, "ready"), timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert child.stop(grace_s=60) == 130
    assert "interrupted" in child.log_tail()


def test_stop_kills_a_child_that_ignores_the_signal(tmp_path):
    child = python_child("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready")
        time.sleep(600)
        """, tmp_path)
    child.start(ready=logged(child, "ready"), timeout=60)
    assert child.stop(grace_s=0.5) == -signal.SIGKILL


def test_stop_asks_with_the_request_first_and_falls_back_to_the_signal(tmp_path):
    child = python_child("""
        import signal, sys, time
        signal.signal(signal.SIGUSR1, lambda *a: sys.exit(7))
        print("ready")
        time.sleep(600)
        """, tmp_path)
    child.start(ready=logged(child, "ready"), timeout=60)
    assert child.stop(grace_s=60, request=lambda: child.popen.send_signal(signal.SIGUSR1)) == 7

    def broken_request():
        raise ConnectionError("server gone")

    other = python_child("""
        import time
        print("ready")
        time.sleep(600)
        """, tmp_path / "other")
    other.start(ready=logged(other, "ready"), timeout=60)
    assert other.stop(grace_s=60, request=broken_request) == -signal.SIGTERM


def test_stop_also_ends_what_the_child_started(tmp_path):
    """The grandchild ignores SIGTERM and outlives its parent: the final SIGKILL to the
    process group ends it."""
    child = python_child("""
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                       "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                       "print('grandchild ready', flush=True); time.sleep(600)"])
        print("grandchild pid", grandchild.pid)
        time.sleep(600)
        """, tmp_path)
    child.start(ready=lambda: all(t in child.log_tail() for t in ("grandchild ready", "pid")),
                timeout=60)
    grandchild = int(re.search(r"grandchild pid (\d+)", child.log_tail()).group(1))
    assert not gone(grandchild)
    child.stop(grace_s=60)
    try:
        psutil.Process(grandchild).wait(timeout=30)  # reaped by init, or already gone
    except psutil.NoSuchProcess:
        pass
    assert gone(grandchild)


def test_free_port_and_port_is_free():
    port = free_port()
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind((HOST, port))
        sock.listen()
        assert not port_is_free(port)
    pair = free_port(also_free_offset=10000)
    assert port_is_free(pair) and port_is_free(pair + 10000)


def test_demo_waits_for_the_stream_jobs_consumer_group(tmp_path, redis_url, redis_client):
    """A stand-in for the stream job creates its group after a while; the wait returns only
    then. A job that never creates it gives an error naming the group and the stream."""
    from beam_jobs import DEFAULT_STREAM

    assert not consumer_group_exists(redis_client, DEFAULT_STREAM, "uic-dien")
    job = python_child(f"""
        import time
        from uic.store import open_redis
        print("loading the step model")
        time.sleep(0.5)
        open_redis({redis_url!r}).xgroup_create({DEFAULT_STREAM!r}, "uic-dien", id="$",
                                                mkstream=True)
        time.sleep(600)
        """, tmp_path)
    with job:
        wait_for_consumer_group(job, redis_url, "uic-dien", timeout=60)
        assert consumer_group_exists(redis_client, DEFAULT_STREAM, "uic-dien")
        assert not consumer_group_exists(redis_client, DEFAULT_STREAM, "uic-mimn")
        with pytest.raises(ProcessStartError, match=rf"(?s)waiting for consumer group 'uic-mimn' "
                           rf"on stream '{DEFAULT_STREAM}'.*loading the step model"):
            wait_for_consumer_group(job, redis_url, "uic-mimn", timeout=0.5)
