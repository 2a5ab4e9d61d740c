"""The supervised stream job as a real process: it survives Redis being killed (SIGKILL) and
restarted on the same port and data directory, drains and exits 0 on SIGTERM without
acknowledging an entry before its write, and reports lag, pending entries, dead letters and
reconnects through Prometheus and `python -m beam_jobs.status`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import beam_jobs
from beam_jobs import status
from beam_jobs.produce import produce
from devkit.ports import free_port
from devkit.redis_server import EmbeddedRedis
from uic.events import Event
from uic.store import StoreUnavailable
from uic.store import connect as store_connect

from .conftest import MALFORMED, assert_states_equal_tower, make_events

STREAM, GROUP = "sup:events", "uic-stream"
REPO = Path(beam_jobs.__file__).resolve().parents[1]
GUARD_S = 300  # a guard against hanging, not a timing assert


class _StreamJob:
    """`python -m beam_jobs.stream` as a subprocess, logging to a file."""

    def __init__(self, url: str, exports, log: Path, *extra: str):
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "beam_jobs.stream", "--model", "dien", "--version", "1",
                 "--saved_models", str(exports), "--redis_url", url, "--stream", STREAM,
                 "--coalesce_ms", "0", *extra],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_for(self, condition, what: str) -> None:
        give_up = time.monotonic() + GUARD_S
        while not condition():
            assert self.proc.poll() is None, f"job exited while waiting for {what}:\n" + \
                self.log.read_text()[-3000:]
            assert time.monotonic() < give_up, f"gave up waiting for {what}"
            time.sleep(0.05)

    def terminate(self) -> int:
        """SIGTERM, then the exit code (the job drains first)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(GUARD_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the job did not stop on SIGTERM:\n" +
                                 self.log.read_text()[-3000:]) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _status(url: str):
    """The group status, or None while Redis cannot be read."""
    try:
        return store_connect(url, connect_timeout_s=1, socket_timeout_s=1).group_status(
            STREAM, GROUP)
    except StoreUnavailable:
        return None


def _has_read(url: str, entries: int) -> bool:
    g = _status(url)
    return g is not None and g.exists and g.lag is not None and g.length - g.lag >= entries


def _all_settled(url: str, total: int) -> bool:
    g = _status(url)
    return (g is not None and g.exists and g.length == total and g.lag == 0
            and g.pending == 0)


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {name: float(value) for name, value in
            (line.split(" ", 1) for line in text.splitlines()
             if line and not line.startswith("#"))}


@pytest.fixture
def durable_redis(tmp_path):
    """A durable Redis (AOF fsynced on every write) on a fixed port and directory, so a
    restart after SIGKILL comes back with everything acknowledged before the kill."""
    server = EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis", appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()


def test_the_job_survives_redis_killed_and_restarted(durable_redis, tiny_exports, tmp_path):
    url = durable_redis.url
    events = sorted(make_events(seed=41, n=200, users=10), key=lambda e: e.sort_key)
    payloads = [e.to_json() for e in events]
    store = store_connect(url)
    produce(store, STREAM, payloads[:100] + MALFORMED[:2], progress=False)
    metrics_port = free_port()
    job = _StreamJob(url, tiny_exports, tmp_path / "job.log", "--batch_size", "8",
                     "--metrics_port", str(metrics_port))
    try:
        job.wait_for(lambda: _has_read(url, 40), "the job to read")
        durable_redis.kill()
        job.wait_for(lambda: "Redis unavailable" in job.log.read_text(), "the outage")
        durable_redis.start()
        store = store_connect(url)
        produce(store, STREAM, payloads[100:], progress=False)
        total = len(payloads) + 2
        job.wait_for(lambda: _all_settled(url, total), "every entry to be acknowledged")
        job.wait_for(lambda: _scrape(metrics_port).get("uic_stream_reconnects_total", 0) >= 1,
                     "the reconnect to be counted")
        scraped = _scrape(metrics_port)
        assert job.terminate() == 0, job.log.read_text()[-3000:]
    finally:
        job.kill()
    log = job.log.read_text()
    assert "Redis is back after an outage of" in log
    assert scraped["uic_stream_redis_up"] == 1
    assert scraped["uic_stream_lag_entries"] == 0 and scraped["uic_stream_pending_entries"] == 0
    assert scraped["uic_stream_dead_letter_entries"] == 2
    assert scraped["uic_stream_applied_total"] >= 1
    assert_states_equal_tower(url, tiny_exports, events)
    assert store.pending_count(STREAM, GROUP) == 0


def test_sigterm_drains_acks_only_what_was_written_and_a_restart_completes(
        redis_url, tiny_exports, tmp_path):
    events = sorted(make_events(seed=42, n=400, users=10), key=lambda e: e.sort_key)
    store = store_connect(redis_url)
    produce(store, STREAM, [e.to_json() for e in events], progress=False)
    job = _StreamJob(redis_url, tiny_exports, tmp_path / "job.log", "--batch_size", "4")
    try:
        job.wait_for(lambda: _has_read(redis_url, 1), "the job to start reading")
        assert job.terminate() == 0, job.log.read_text()[-3000:]
    finally:
        job.kill()
    stopped = store.group_status(STREAM, GROUP)
    # drained: the batch in hand was written and acknowledged, nothing is left pending
    assert stopped.pending == 0
    # every acknowledged entry (all delivered ones) has its write, and nothing else does
    delivered = [e for chunk in store.replay_stream(STREAM) for e in chunk
                 if _id_key(e.entry_id) <= _id_key(stopped.last_delivered_id)]
    done = [Event.from_json(e.fields["event"]) for e in delivered]
    assert_states_equal_tower(redis_url, tiny_exports, done)
    later = {e.user_id for e in events} - {e.user_id for e in done}
    assert all(s is None for s in store.read_states("dien", 1, sorted(later)))
    # a restart completes the rest
    rest = _StreamJob(redis_url, tiny_exports, tmp_path / "rest.log", "--max_idle_seconds", "2")
    try:
        assert rest.proc.wait(GUARD_S) == 0, rest.log.read_text()[-3000:]
    finally:
        rest.kill()
    assert_states_equal_tower(redis_url, tiny_exports, events)
    assert store.pending_count(STREAM, GROUP) == 0


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_status_cli_prints_lag_pending_dead_letters_consumers_and_versions(redis_url, capsys):
    store = store_connect(redis_url)
    store.add_to_stream(STREAM, [{"event": f"e{i}"} for i in range(10)])
    store.create_group(STREAM, GROUP)
    held = store.read_new(STREAM, GROUP, "worker-7", count=4)  # read, never acknowledged
    store.ack(STREAM, GROUP, [held[0].entry_id],
              dead_letters=[{"reason": "bad", "payload": "x"}] * 3,
              dead_letter_stream=STREAM + ":dlq")
    store.set_active_version("dien", 3)
    assert status.main(["--redis_url", redis_url, "--stream", STREAM, "--group", GROUP]) == 0
    out = capsys.readouterr().out
    assert "stream sup:events: 10 entries" in out
    assert "lag        6" in out
    assert "pending    3 (oldest waiting" in out
    assert "consumer worker-7: 3 pending" in out
    assert "dead letters 3" in out
    assert "active dien: v3" in out and "active mimn: none" in out


def test_status_cli_names_a_missing_group_and_an_unreachable_redis(redis_url, capsys):
    store_connect(redis_url).add_to_stream(STREAM, [{"event": "e"}])
    assert status.main(["--redis_url", redis_url, "--stream", STREAM]) == 0
    assert "group uic-stream: does not exist yet" in capsys.readouterr().out
    assert status.main(["--redis_url", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    assert "cannot reach Redis" in capsys.readouterr().err
