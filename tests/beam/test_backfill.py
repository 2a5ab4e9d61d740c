"""The backfill job on the DirectRunner with real Redis and tiny real exports."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from beam_jobs import backfill
from beam_jobs.common import JobError
from uic.store import StoreConfig
from uic.store import connect as store_connect

from .conftest import MALFORMED, histories, tower_states, write_jsonl


def _run(url, exports, events_path, tmp_path, model="dien", *extra):
    return backfill.run(["--model", model, "--version", "1", "--saved_models", str(exports),
                         "--redis_url", url, "--events", str(events_path),
                         "--dead_letter", str(tmp_path / "dead.jsonl"), "--batch_size", "5",
                         *extra])


@pytest.mark.parametrize("model", ["dien", "mimn"])
def test_backfill_states_equal_tower_on_same_histories(model, redis_url, tiny_exports,
                                                       events_data, tmp_path):
    path, events = events_data
    res = _run(redis_url, tiny_exports, path, tmp_path, model)
    hists = histories(events)
    assert res.totals["users"] == len(hists)
    assert res.totals["events"] == len(events)
    assert res.totals["rejected"] == len(MALFORMED)
    assert res.totals["states_written"] == len(hists)
    assert res.activated  # first deployment: no pointer was set

    store = store_connect(redis_url)
    assert store.get_active_version(model) == 1
    expected = tower_states(tiny_exports, model, 1, hists)
    stored = store.read_states(model, 1, list(hists))
    for (user, hist), got in zip(hists.items(), stored, strict=True):
        assert got is not None, user
        np.testing.assert_allclose(got.state, expected[user], atol=1e-5, rtol=0)
        assert got.events_applied == len(hist)
        assert (got.last_event_time_ms, got.last_event_id) == hist[-1].sort_key
    # users really differ (the comparison is not between constants)
    assert np.abs(stored[0].state - stored[1].state).max() > 1e-4

    cold = store.read_cold_start(model, 1)
    empty = tower_states(tiny_exports, model, 1, {0: []})[0]
    np.testing.assert_allclose(cold, empty, atol=1e-6)
    # Architecture A behaviour lists, oldest first, in (time, id) order
    some_user = next(iter(hists))
    assert store.read_behaviours(some_user, 1000) == hists[some_user]

    dead = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert sorted(d["raw"] for d in dead) == sorted(MALFORMED)
    assert all(d["reason"] and d["line"] for d in dead)


def test_cutoff_rebuild_and_max_history(redis_url, tiny_exports, events_data, tmp_path):
    path, events = events_data
    times = sorted(e.event_time_ms for e in events)
    cutoff = times[len(times) // 2]
    res = _run(redis_url, tiny_exports, path, tmp_path, "dien", "--cutoff_ts", str(cutoff),
               "--max_history", "6", "--namespace", "pit")
    hists = histories(events, cutoff)
    assert res.totals["after_cutoff"] == sum(e.event_time_ms > cutoff for e in events)
    truncated = {u: h[-6:] for u, h in hists.items()}
    expected = tower_states(tiny_exports, "dien", 1, truncated)
    store = store_connect(redis_url, namespace="pit")
    for user, hist in truncated.items():
        got = store.read_state("dien", 1, user)
        np.testing.assert_allclose(got.state, expected[user], atol=1e-5, rtol=0)
        assert got.events_applied == len(hist) <= 6
        assert got.last_event_time_ms <= cutoff
    # the live namespace was not touched
    assert store_connect(redis_url).read_state("dien", 1, next(iter(hists))) is None


def test_rerun_is_idempotent_and_csv_input(redis_url, tiny_exports, tmp_path):
    csv = tmp_path / "UserBehavior.csv"
    csv.write_text("1,10,3,pv,1511544070\n1,11,4,buy,1511544071\n2,10,3,pv,1511544072\n"
                   "2,oops,3,pv,1511544073\n1,12,3,cart,1511544069\n")
    first = _run(redis_url, tiny_exports, csv, tmp_path)
    assert first.totals["users"] == 2 and first.totals["rejected"] == 1
    store = store_connect(redis_url)
    before = store.read_state("dien", 1, 1)
    assert before.events_applied == 3 and before.last_event_time_ms == 1511544071000
    again = _run(redis_url, tiny_exports, csv, tmp_path)
    assert again.totals.get("states_written", 0) == 0  # CAS: not more events, not rewritten
    assert again.totals["states_not_newer"] == 2
    assert store.read_state("dien", 1, 1) == before


def test_bad_inputs_fail_clearly(redis_url, tiny_exports, tmp_path):
    ok = write_jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(JobError, match="matched no files"):
        _run(redis_url, tiny_exports, tmp_path / "missing-*.jsonl", tmp_path)
    with pytest.raises(JobError, match="cutoff_ts"):
        _run(redis_url, tiny_exports, ok, tmp_path, "dien", "--cutoff_ts", "yesterday")
    with pytest.raises(JobError, match="not a SavedModel"):
        _run(redis_url, tiny_exports, ok, tmp_path, "dien", "--version", "9")
    with pytest.raises(JobError, match="max_history"):
        _run(redis_url, tiny_exports, ok, tmp_path, "dien", "--max_history", "0")
    with pytest.raises(JobError, match="cannot reach Redis"):
        backfill.run(["--model", "dien", "--saved_models", str(tiny_exports), "--events",
                      str(ok), "--redis_url", "redis://127.0.0.1:1/0"])
    assert backfill.main(["--model", "dien", "--saved_models", str(tmp_path), "--events",
                          str(ok), "--redis_url", redis_url]) == 2
    # the same checks hold for callers of run_backfill (the roll-out)
    options = backfill.BackfillOptions(model="dien", events=[str(ok)], saved_models=str(tiny_exports),
                                       store=StoreConfig(url=redis_url))
    with pytest.raises(JobError, match="model must be one of"):
        backfill.run_backfill(dataclasses.replace(options, model="mlp"))
    with pytest.raises(JobError, match="activate must be one of"):
        backfill.run_backfill(dataclasses.replace(options, activate="maybe"))


def test_length_buckets_pad_no_history_to_more_than_twice_its_length():
    from beam_jobs.model_handler import length_buckets, tower_example

    lengths = [5000, 3, 0, 7, 4, 1, 2, 4096]
    batch = [tower_example([1] * n, [1] * n) for n in lengths]
    buckets = length_buckets("tower", batch)
    assert sorted(i for rows in buckets for i in rows) == list(range(len(batch)))
    for rows in buckets:
        longest = max(lengths[i] for i in rows)
        assert all(longest <= max(1, 2 * lengths[i] - 1) for i in rows), [lengths[i] for i in rows]
    assert len(buckets) == 5  # 0 | 1 | 2-3 | 4-7 | 4096-8191
