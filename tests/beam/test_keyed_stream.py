"""The stream job's keyed update step (`beam_jobs.keyed_updates`): users hashed to key
shards, a stateful DoFn keyed by shard, one batched apply per bundle. Real redis-server,
tiny real exports, Beam's FnApiRunner (in process and with 4 SDK worker processes)."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import beam_jobs
from beam_jobs import stream
from beam_jobs.keyed_updates import ShardWork, _KeyByShardFn, shard_of
from beam_jobs.produce import produce
from uic.store import connect as store_connect

from .conftest import CommandLog, assert_states_equal_tower, make_events
from .test_parallel_stream import _interleaved

STREAM = "keyed:events"
GROUP = "uic-stream"
REPO = Path(beam_jobs.__file__).resolve().parents[1]


def _args(url, exports, *extra):
    return ["--model", "dien", "--version", "1", "--saved_models", str(exports),
            "--redis_url", url, "--stream", STREAM, "--coalesce_ms", "0", *extra]


def test_key_by_shard_puts_each_user_in_one_shard_in_history_order():
    events = _interleaved(seed=41, n=120, users=9)
    records = [(f"1-{i}", e.to_json().encode()) for i, e in enumerate(events)]
    records.insert(5, ("1-999", b"not json"))
    out = list(_KeyByShardFn(4).process(records))
    shards_of_user = collections.defaultdict(set)
    rejected = []
    for shard, work in out:
        assert isinstance(work, ShardWork)
        rejected.extend(work.rejected)
        keys = [e.sort_key for _, e in work.entries]
        assert keys == sorted(keys), shard  # (time, event id) order inside a shard
        for _, event in work.entries:
            assert shard == shard_of(event.user_id, 4)
            shards_of_user[event.user_id].add(shard)
    assert all(len(s) == 1 for s in shards_of_user.values())
    assert len({shard for shard, _ in out}) > 1  # the users do spread over the shards
    assert sum(len(w.entries) for _, w in out) == len(events)
    assert [d.entry_id for d in rejected] == ["1-999"]  # once, with one element


def test_shard_of_is_stable_across_processes():
    """Python's own hash of a str changes per process; the shard of a user must not."""
    assert [shard_of(u, 64) for u in (0, 1, 2, 12345, 2**62)] == [41, 55, 20, 45, 57]


def test_multi_processing_runner_with_4_workers_equals_the_tower(redis_url, tiny_exports,
                                                                 monkeypatch):
    """The job on Beam's FnApiRunner with 4 SDK worker processes, on interleaved events of
    a few users, each user's events spread over many small batches (swapped neighbours
    and re-sent events included): every state is the tower over the user's history. (The
    workers take turns: the runner hands each poll's bundle to one of them, and each loads
    the models, which makes this the slowest test of the file.)"""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the SDK workers import beam_jobs
    sent = _interleaved(seed=42, n=60, users=4)
    store = store_connect(redis_url)
    produce(store, STREAM, [e.to_json() for e in sent], progress=False)
    totals = stream.run(_args(redis_url, tiny_exports, "--batch_size", "5", "--key_shards", "4",
                              "--max_idle_seconds", "2",
                              "--direct_running_mode=multi_processing",
                              "--direct_num_workers=4"))
    assert totals["entries"] == len(sent)
    assert totals["batches"] >= len(sent) // 5  # several batches for every user
    assert sum(totals.get(k, 0) for k in ("late", "undecidable", "rejected", "unapplied")) == 0
    assert_states_equal_tower(redis_url, tiny_exports, sent)
    assert store.pending_count(STREAM, GROUP) == 0


def test_a_poll_is_applied_with_one_batched_update_then_acknowledged(redis_url, tiny_exports):
    """Keying keeps the batching: the shards of one poll are applied by one updater call
    (one read of the states, one compare-and-set script run per user) before the poll's
    single acknowledgement, not one call per shard."""
    events = sorted(make_events(seed=43, n=160, users=12), key=lambda e: e.sort_key)
    store = store_connect(redis_url)
    produce(store, STREAM, [e.to_json() for e in events], progress=False)
    with CommandLog(redis_url) as log:
        totals = stream.run(_args(redis_url, tiny_exports, "--batch_size", "40",
                                  "--key_shards", "16", "--max_idle_seconds", "1"))
    assert totals["batches"] == 4 and totals["rebuilds"] == 0
    state_reads = [i for i, words in enumerate(log.commands)
                   if words[0].upper() == "MGET" and re.search(r":s:dien:1$", words[1])]
    acks = log.positions("XACK", 1, STREAM)
    assert len(acks) == 4
    previous = -1
    for ack in acks:
        reads = [r for r in state_reads if previous < r < ack]
        assert len(reads) == 1, (ack, reads)  # one batched apply per poll
        entries = log.commands[ack][3:]
        assert len(entries) == 40  # the poll's entries, after its writes, in one XACK
        previous = ack
    assert_states_equal_tower(redis_url, tiny_exports, events)


def test_key_shards_flag_is_checked(redis_url, tiny_exports, capsys):
    assert stream.main(_args(redis_url, tiny_exports, "--key_shards", "0")) == 2
    assert "--key_shards must be >= 1" in capsys.readouterr().err

