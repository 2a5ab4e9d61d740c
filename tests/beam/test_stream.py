"""The streaming job (Beam streaming, Python direct runner engine) against real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import beam_jobs
from beam_jobs import backfill, stream
from beam_jobs.produce import produce
from uic.events import Event
from uic.store import connect as store_connect
from uic.store import open_redis

from .conftest import MALFORMED, histories, make_events, tower_states, write_jsonl

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

    client = open_redis(redis_url)
    payloads = [e.to_json() for e in ordered]
    for i, bad in enumerate(MALFORMED):
        payloads.insert(10 + 20 * i, bad)
    client.xadd(STREAM, {"not_event": "x"})  # an entry without the event field
    produce(client, STREAM, payloads, rate=0, progress=False)

    totals = stream.run(_stream_args(redis_url, tiny_exports, "--batch_size", "40"))
    n_before = sum(e.event_time_ms <= cutoff for e in events)
    assert totals["duplicates"] == n_before  # already in the backfilled states
    assert totals["applied"] == len(events) - n_before
    assert totals["rejected"] == len(MALFORMED) + 1
    assert totals["new_users"] == 1
    _assert_states_match_full_history(redis_url, tiny_exports, events)

    dlq = client.xrange(f"{STREAM}:dlq")
    assert len(dlq) == len(MALFORMED) + 1
    assert sorted(f[b"payload"].decode() for _, f in dlq if f[b"payload"]) == sorted(MALFORMED)
    assert all(f[b"reason"] for _, f in dlq)
    assert client.xpending(STREAM, "uic-stream")["pending"] == 0

    # restart: a late event (older than the watermark, never seen) is dead-lettered, a
    # re-sent old event is a duplicate, a new one is applied
    user = ordered[0].user_id
    late = Event(user, 7, 7, "pv", ordered[0].event_time_ms - 10, "late-1")
    fresh = Event(user, 8, 8, "buy", ordered[-1].event_time_ms + 5, "fresh-1")
    produce(client, STREAM, [late.to_json(), ordered[0].to_json(), fresh.to_json()],
            progress=False)
    totals = stream.run(_stream_args(redis_url, tiny_exports))
    assert (totals["late"], totals["duplicates"], totals["applied"]) == (1, 1, 1)
    reasons = [f[b"reason"].decode() for _, f in client.xrange(f"{STREAM}:dlq")]
    assert reasons[-1].startswith("late")
    _assert_states_match_full_history(redis_url, tiny_exports, events + [fresh])


def test_sigkill_between_write_and_ack_neither_loses_nor_double_applies(
        redis_url, tiny_exports, tmp_path):
    events = make_events(seed=5, n=120, users=8)
    client = open_redis(redis_url)
    produce(client, STREAM, [e.to_json() for e in sorted(events, key=lambda e: e.sort_key)],
            progress=False)
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "beam_jobs.stream",
         *_stream_args(redis_url, tiny_exports, "--version", "1", "--batch_size", "30",
                       "--coalesce_ms", "0", "--crash_after_writes", "2")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed after the write, before ack
    pending = client.xpending(STREAM, "uic-stream")["pending"]
    assert pending > 0  # the last written batch was never acknowledged
    store = store_connect(redis_url)
    partial = sum(s.events_applied for s in
                  store.read_states("dien", 1, sorted({e.user_id for e in events})) if s)
    assert 0 < partial < len(events)

    totals = stream.run(_stream_args(redis_url, tiny_exports, "--version", "1"))
    assert totals["entries_redelivered"] >= pending
    assert totals["duplicates"] >= 1  # the re-delivered, already-written events
    assert totals["applied"] == len(events) - partial
    _assert_states_match_full_history(redis_url, tiny_exports, events)
    assert client.xpending(STREAM, "uic-stream")["pending"] == 0


def test_stream_cli_rejects_bad_options(redis_url, tiny_exports, capsys):
    assert stream.main(_stream_args(redis_url, tiny_exports, "--batch_size", "0")) == 2
    assert "--batch_size must be >= 1" in capsys.readouterr().err
    assert stream.main(_stream_args(redis_url, tiny_exports, "--source", "pubsub")) == 2
    assert "--pubsub_subscription" in capsys.readouterr().err
    assert stream.main(_stream_args(redis_url, tiny_exports, "--version", "7")) == 2
    assert "not a SavedModel" in capsys.readouterr().err
