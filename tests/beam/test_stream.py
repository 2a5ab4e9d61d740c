"""The streaming job (Beam streaming, Python direct runner engine) against real Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import beam_jobs
from beam_jobs import backfill, stream
from beam_jobs.produce import produce
from uic.events import Event, InvalidEvent
from uic.store import connect as store_connect

from .conftest import MALFORMED, CommandLog, histories, make_events, tower_states, write_jsonl

STREAM = "test:events"
REPO = Path(beam_jobs.__file__).resolve().parents[1]


def _stream_args(url, exports, *extra):
    return ["--model", "dien", "--saved_models", str(exports), "--redis_url", url,
            "--stream", STREAM, "--max_idle_seconds", "1", "--coalesce_ms", "5", *extra]


def _assert_states_match_full_history(url, exports, events, atol=1e-5):
    hists = histories(events)
    expected = tower_states(exports, "dien", 1, hists)
    store = store_connect(url)
    for user, hist in hists.items():
        got = store.read_state("dien", 1, user)
        assert got is not None, user
        assert got.events_applied == len(hist), (user, got.events_applied, len(hist))
        assert (got.last_event_time_ms, got.last_event_id) == hist[-1].sort_key
        np.testing.assert_allclose(got.state, expected[user], atol=atol, rtol=0)


def test_stream_converges_with_backfill_and_dead_letters(redis_url, tiny_exports, tmp_path):
    events = make_events(seed=11)
    ordered = sorted(events, key=lambda e: e.sort_key)
    cutoff = ordered[len(ordered) // 2].event_time_ms
    # a user who only appears after the cutoff starts from the cold-start state
    newcomer = Event(999, 42, 3, "pv", ordered[-1].event_time_ms + 1, "new-1")
    events.append(newcomer)
    ordered.append(newcomer)
    path = write_jsonl(tmp_path / "events.jsonl", events)
    backfill.run(["--model", "dien", "--version", "1", "--saved_models", str(tiny_exports),
                  "--redis_url", redis_url, "--events", str(path), "--cutoff_ts", str(cutoff),
                  "--dead_letter", str(tmp_path / "dead.jsonl")])

    store = store_connect(redis_url)
    payloads = [e.to_json() for e in ordered]
    for i, bad in enumerate(MALFORMED):
        payloads.insert(10 + 20 * i, bad)
    store.add_to_stream(STREAM, [{"not_event": "x"}])  # an entry without the event field
    produce(store, STREAM, payloads, rate=0, progress=False)

    with CommandLog(redis_url) as log:
        totals = stream.run(_stream_args(redis_url, tiny_exports, "--batch_size", "40"))
    n_before = sum(e.event_time_ms <= cutoff for e in events)
    assert totals["duplicates"] == n_before  # already in the backfilled states
    assert totals["applied"] == len(events) - n_before
    assert totals["rejected"] == len(MALFORMED) + 1
    assert totals["new_users"] == 1
    _assert_states_match_full_history(redis_url, tiny_exports, events)

    dlq = [e.fields for chunk in store.replay_stream(f"{STREAM}:dlq") for e in chunk]
    assert len(dlq) == len(MALFORMED) + 1
    assert sorted(f["payload"].decode() for f in dlq if f["payload"]) == sorted(MALFORMED)
    assert all(f["reason"] for f in dlq)
    assert store.pending_count(STREAM, "uic-stream") == 0
    # In the server's order, an applied entry is acknowledged only after its user's state
    # write, made since the previous acknowledgement (its batch's writes).
    user_of = {}
    for chunk in store.replay_stream(STREAM):
        for entry in chunk:
            try:
                event = Event.from_json(entry.fields.get("event") or b"")
            except InvalidEvent:
                continue
            if event.event_time_ms > cutoff:
                user_of[entry.entry_id] = event.user_id
    writes = log.positions("EVALSHA", 3, r"uic:\{u:\d+\}:s:dien:1")
    checked, previous = 0, -1
    for ack in log.positions("XACK", 1, STREAM):
        written = {int(re.search(r"\{u:(\d+)\}", log.commands[w][3]).group(1))
                   for w in writes if previous < w < ack}
        for entry_id in log.commands[ack][3:]:
            if entry_id in user_of:
                assert user_of[entry_id] in written, (entry_id, ack)
                checked += 1
        previous = ack
    assert checked == len(user_of) == len(events) - n_before

    # restart: a late event (older than the watermark, never seen) within the allowed
    # lateness is applied exactly (the user is rebuilt from the log), one beyond it is
    # dead-lettered, a re-sent old event is a duplicate, a new one is applied
    user = ordered[0].user_id
    late = Event(user, 7, 7, "pv", ordered[0].event_time_ms - 10, "late-1")
    too_late = Event(user, 9, 9, "pv", ordered[0].event_time_ms - 7_200_000, "late-2")
    fresh = Event(user, 8, 8, "buy", ordered[-1].event_time_ms + 5, "fresh-1")
    produce(store, STREAM, [late.to_json(), too_late.to_json(), ordered[0].to_json(),
                            fresh.to_json()], progress=False)
    totals = stream.run(_stream_args(redis_url, tiny_exports))
    assert (totals["late"], totals["late_applied"], totals["duplicates"]) == (1, 1, 1)
    assert totals["rebuilds"] == 1
    reasons = [e.fields["reason"].decode() for chunk in store.replay_stream(f"{STREAM}:dlq")
               for e in chunk]
    assert reasons[-1].startswith("late") and "late-2" in reasons[-1]
    _assert_states_match_full_history(redis_url, tiny_exports, events + [late, fresh])
    assert store.pending_count(STREAM, "uic-stream") == 0


def test_restart_after_writes_before_ack_neither_loses_nor_double_applies(
        redis_url, tiny_exports):
    """The Redis state a crash between the writes and the ack leaves behind, made with the
    job's own parts: a batch read by the consumer (pending) and applied, never acked."""
    from beam_jobs.updater import StateUpdater

    events = sorted(make_events(seed=5, n=120, users=8), key=lambda e: e.sort_key)
    store = store_connect(redis_url)
    produce(store, STREAM, [e.to_json() for e in events], progress=False)
    store.create_group(STREAM, "uic-stream")
    read = store.read_new(STREAM, "uic-stream", "worker-1", count=50)
    assert len(read) == 50
    StateUpdater(store, tiny_exports, "dien", 1).apply([Event.from_json(e.fields["event"])
                                                        for e in read])
    assert store.pending_count(STREAM, "uic-stream") == 50

    totals = stream.run(_stream_args(redis_url, tiny_exports, "--version", "1"))
    assert totals["entries_redelivered"] == 50
    assert totals["duplicates"] == 50  # recognised, not applied a second time
    assert totals["applied"] == len(events) - 50
    _assert_states_match_full_history(redis_url, tiny_exports, events)
    assert store.pending_count(STREAM, "uic-stream") == 0


def test_sigkill_from_outside_then_restart_converges(redis_url, tiny_exports, tmp_path):
    """Kill -9 the running job while it has written states and holds a batch in flight (read,
    not acknowledged); the restarted job re-reads exactly those entries and ends with the
    states of a clean run."""
    events = sorted(make_events(seed=9, n=120, users=8), key=lambda e: e.sort_key)
    store = store_connect(redis_url)
    produce(store, STREAM, [e.to_json() for e in events[:90]], progress=False)
    users = sorted({e.user_id for e in events})
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    log = tmp_path / "stream.log"
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.stream",
             *_stream_args(redis_url, tiny_exports, "--version", "1", "--batch_size", "10",
                           "--coalesce_ms", "0", "--max_idle_seconds", "300")],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        give_up = time.monotonic() + 300  # a guard against hanging, not a timing assert
        while not (any(s is not None for s in store.read_states("dien", 1, users))
                   and store.pending_count(STREAM, "uic-stream") > 0):
            assert job.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < give_up, "the stream job wrote no state"
            time.sleep(0.01)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert job.returncode == -signal.SIGKILL
    partial = sum(s.events_applied for s in store.read_states("dien", 1, users) if s)
    assert 0 < partial <= 90
    pending = store.pending_count(STREAM, "uic-stream")

    produce(store, STREAM, [e.to_json() for e in events[90:]], progress=False)
    totals = stream.run(_stream_args(redis_url, tiny_exports, "--version", "1"))
    assert totals.get("entries_redelivered", 0) == pending
    assert totals["applied"] == len(events) - partial
    assert totals["applied"] + totals["duplicates"] == totals["entries"]
    _assert_states_match_full_history(redis_url, tiny_exports, events)
    assert store.pending_count(STREAM, "uic-stream") == 0


def test_stream_cli_rejects_bad_options(redis_url, tiny_exports, capsys):
    assert stream.main(_stream_args(redis_url, tiny_exports, "--batch_size", "0")) == 2
    assert "--batch_size must be >= 1" in capsys.readouterr().err
    assert stream.main(_stream_args(redis_url, tiny_exports, "--source", "pubsub")) == 2
    assert "--pubsub_subscription" in capsys.readouterr().err
    assert stream.main(_stream_args(redis_url, tiny_exports, "--version", "7")) == 2
    assert "not a SavedModel" in capsys.readouterr().err
