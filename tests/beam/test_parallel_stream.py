"""The stream job with several workers, redeliveries, a backfill beside it and hostile
input: real redis-server, tiny real exports, real stream-job subprocesses. Every test ends
with each user's state equal to the tower over the user's whole history."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import beam_jobs
from beam_jobs import stream
from beam_jobs.backfill import BackfillOptions, run_backfill
from beam_jobs.produce import produce
from uic.codec import now_ms
from uic.events import Event
from uic.store import StoreConfig
from uic.store import connect as store_connect

from .conftest import assert_states_equal_tower, make_events, write_jsonl

STREAM = "par:events"
GROUP = "uic-stream"
REPO = Path(beam_jobs.__file__).resolve().parents[1]
GUARD_S = 300  # a guard against hanging, not a timing assert


def _args(url, exports, *extra):
    return ["--model", "dien", "--version", "1", "--saved_models", str(exports),
            "--redis_url", url, "--stream", STREAM, "--coalesce_ms", "0", *extra]


class _Jobs:
    """Stream-job subprocesses, one consumer each, in one consumer group."""

    def __init__(self, url, exports, tmp_path: Path, n: int, *extra):
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
        self.logs = [tmp_path / f"worker-{i}.log" for i in range(1, n + 1)]
        self.procs = []
        for i, log in enumerate(self.logs, start=1):
            with log.open("w") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "beam_jobs.stream",
                     *_args(url, exports, "--consumer", f"worker-{i}", *extra)],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        self.store = store_connect(url)

    def wait_registered(self) -> None:
        """Until every consumer has polled the group once (so each gets a share)."""
        give_up = time.monotonic() + GUARD_S
        while True:
            self.check_alive()
            try:
                names = {c["name"] for c in self.store.client.xinfo_consumers(STREAM, GROUP)}
            except Exception:  # noqa: BLE001 - the group does not exist yet
                names = set()
            if len(names) >= len(self.procs):
                return
            assert time.monotonic() < give_up, "the workers did not start"
            time.sleep(0.05)

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None and proc.returncode != 0:
                raise AssertionError(log.read_text()[-3000:])

    def finish(self) -> list[dict[str, int]]:
        """Wait for every job to drain; each job's printed counters."""
        out = []
        for proc, log in zip(self.procs, self.logs, strict=True):
            try:
                proc.wait(GUARD_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            text = log.read_text()
            assert proc.returncode in (0, -signal.SIGKILL), text[-3000:]
            out.append({k: int(v.replace(",", "")) for k, v in
                        re.findall(r"^\s+(\w+)\s+([\d,]+)$", text, re.M)})
        return out

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _interleaved(seed: int, n: int = 300, users: int = 12) -> list[Event]:
    """Events of a dozen users, in stream order by time with neighbours swapped so some
    arrive late, and ~10% sent twice."""
    events = sorted(make_events(seed=seed, n=n, users=users), key=lambda e: e.sort_key)
    sent = list(events)
    for i in range(0, len(sent) - 1, 7):
        sent[i], sent[i + 1] = sent[i + 1], sent[i]
    return sent + sent[::10]


@pytest.mark.parametrize("workers", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_several_stream_jobs_in_one_group_equal_the_tower(workers, redis_url, tiny_exports,
                                                         tmp_path):
    sent = _interleaved(seed=31)
    jobs = _Jobs(redis_url, tiny_exports, tmp_path, workers, "--batch_size", "6",
                 "--max_idle_seconds", "5")
    try:
        jobs.wait_registered()
        produce(jobs.store, STREAM, [e.to_json() for e in sent], rate=150, progress=False)
        totals = jobs.finish()
    finally:
        jobs.kill_all()
    assert all(t.get("entries", 0) > 0 for t in totals), totals  # every worker took a share
    # entries that lost every CAS race stayed pending and were claimed again, so a worker
    # may see an entry twice; nothing was refused
    assert sum(t.get("entries", 0) for t in totals) >= len(sent), totals
    assert sum(t.get("late", 0) + t.get("undecidable", 0) + t.get("rejected", 0)
               for t in totals) == 0, totals
    assert_states_equal_tower(redis_url, tiny_exports, sent)
    # entries that lost every race in a worker's last batch are still pending (never
    # acknowledged unapplied); a later run settles them without applying anything twice
    left = jobs.store.pending_count(STREAM, GROUP)
    again = stream.run(_args(redis_url, tiny_exports, "--consumer", "worker-1",
                             "--claim_idle_ms", "0", "--max_idle_seconds", "1"))
    assert again.get("entries", 0) >= left
    assert jobs.store.pending_count(STREAM, GROUP) == 0
    assert_states_equal_tower(redis_url, tiny_exports, sent)


def test_kill_9_of_one_of_several_workers_mid_batch(redis_url, tiny_exports, tmp_path):
    """SIGKILL one of two workers while it holds entries read but not acknowledged; the
    survivor claims them (XAUTOCLAIM) and the states end equal to the tower."""
    sent = _interleaved(seed=32, n=240)
    jobs = _Jobs(redis_url, tiny_exports, tmp_path, 2, "--batch_size", "6",
                 "--claim_idle_ms", "1000", "--max_idle_seconds", "8")
    try:
        jobs.wait_registered()
        produce(jobs.store, STREAM, [e.to_json() for e in sent[:120]], rate=0, progress=False)
        give_up = time.monotonic() + GUARD_S
        victim = jobs.procs[0]
        while not jobs.store.client.xpending_range(STREAM, GROUP, "-", "+", 10, "worker-1"):
            jobs.check_alive()
            assert time.monotonic() < give_up, "worker-1 never held an entry"
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        produce(jobs.store, STREAM, [e.to_json() for e in sent[120:]], rate=0, progress=False)
        jobs.finish()
    finally:
        jobs.kill_all()
    assert victim.returncode == -signal.SIGKILL
    assert_states_equal_tower(redis_url, tiny_exports, sent)
    assert jobs.store.pending_count(STREAM, GROUP) == 0


def test_redelivery_to_another_consumer_by_xautoclaim(redis_url, tiny_exports):
    sent = _interleaved(seed=33, n=150, users=8)
    store = store_connect(redis_url)
    produce(store, STREAM, [e.to_json() for e in sent], progress=False)
    store.create_group(STREAM, GROUP)
    # a consumer that read 40 entries and died: they stay pending for it
    ghost = store.read_new(STREAM, GROUP, "ghost", count=40)
    assert len(ghost) == 40
    totals = stream.run(_args(redis_url, tiny_exports, "--claim_idle_ms", "300",
                              "--batch_size", "10", "--max_idle_seconds", "2"))
    assert totals["entries_redelivered"] == 40
    assert totals.get("unapplied", 0) == totals.get("late", 0) == 0
    assert_states_equal_tower(redis_url, tiny_exports, sent)
    assert store.pending_count(STREAM, GROUP) == 0


def test_backfill_beside_a_running_stream_job_ends_with_the_union(redis_url, tiny_exports,
                                                                  tmp_path):
    """The backfill holds half of each user's events, the stream the other half, both run
    at once: neither erases the other, every state is the tower over the union."""
    events = sorted(make_events(seed=34, n=240, users=10), key=lambda e: e.sort_key)
    in_files, in_stream = events[0::2], events[1::2]
    path = write_jsonl(tmp_path / "events.jsonl", in_files)
    store = store_connect(redis_url)
    store.set_active_version("dien", 1)
    jobs = _Jobs(redis_url, tiny_exports, tmp_path, 1, "--batch_size", "8",
                 "--max_idle_seconds", "6")
    try:
        jobs.wait_registered()
        producer = subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.produce", "--redis_url", redis_url,
             "--stream", STREAM, "--events", str(write_jsonl(tmp_path / "s.jsonl", in_stream)),
             "--rate", "60", "--quiet"], cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
        result = run_backfill(BackfillOptions(
            model="dien", events=[str(path)], store=StoreConfig(url=redis_url),
            saved_models=str(tiny_exports), version=1, batch_size=3,
            dead_letter=str(tmp_path / "dead.jsonl"), activate="no"))
        assert producer.wait(GUARD_S) == 0
        jobs.finish()
    finally:
        jobs.kill_all()
    assert result.totals["states_written"] > 0
    assert_states_equal_tower(redis_url, tiny_exports, events)


def test_poison_entries_never_stop_the_job(redis_url, tiny_exports):
    """Each hostile entry becomes a dead letter with its reason and raw payload; valid
    events of the same users before and after it are applied."""
    events = sorted(make_events(seed=35, n=80, users=5), key=lambda e: e.sort_key)
    store = store_connect(redis_url)
    produce(store, STREAM, [e.to_json() for e in events[:40]], progress=False)
    stream.run(_args(redis_url, tiny_exports, "--max_idle_seconds", "1"))
    victim = events[-1].user_id
    store.client.set(store.state_key("dien", 1, victim), b"UIS\x01 not a state")
    user = events[0].user_id
    poison = [
        "[" * 2000 + "]" * 2000,  # deep nesting
        '{"user_id": ' + "9" * 6000 + "}",  # a 6,000-digit integer
        b'{"user_id": 1, "item_id": "\xff\xfe"}',  # invalid UTF-8
        json.dumps({"user_id": user, "item_id": 1, "category_id": 1, "behavior_type": "pv",
                    "event_time_ms": 1, "event_id": "x"}).replace("1,", "NaN,", 1),  # NaN
        b"",  # an empty entry
        Event(user, 5, 5, "pv", now_ms() + 86_400_000, "from-the-future").to_json(),
    ]
    payloads = [p.encode() if isinstance(p, str) else p for p in poison]
    mixed = []
    for i, e in enumerate(events[40:]):
        mixed.append(e.to_json().encode())
        if i < len(payloads):
            mixed.append(payloads[i])
    produce(store, STREAM, mixed, progress=False)
    totals = stream.run(_args(redis_url, tiny_exports, "--max_idle_seconds", "1"))
    assert totals["rejected"] == 5 and totals["future"] == 1
    assert totals["corrupt_states"] == 1
    dlq = [e.fields for chunk in store.replay_stream(f"{STREAM}:dlq") for e in chunk]
    assert sorted(f["payload"] for f in dlq if f["entry_id"]) == sorted(payloads)
    assert all(f["reason"] for f in dlq)
    assert any(b"corrupt stored state" in f["reason"] for f in dlq)
    assert any(b"ahead of now" in f["reason"] for f in dlq)
    assert_states_equal_tower(redis_url, tiny_exports, events)
    assert store.pending_count(STREAM, GROUP) == 0
