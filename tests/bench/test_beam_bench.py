"""bench.beam's stream grid: the measurement runs end to end on tiny settings (real Redis,
real stream job processes, tiny exports) and accounts for every event; no speed asserts."""

from __future__ import annotations

import numpy as np
import pytest

from bench import beam


def test_zipf_users_are_skewed_and_in_range():
    users = beam.zipf_users(20_000, 1_000, 1.1, seed=0)
    assert users.min() >= 0 and users.max() < 1_000
    counts = np.sort(np.bincount(users, minlength=1_000))[::-1]
    assert counts[0] > 20 * np.median(counts)  # a few heavy users, many light ones


def test_cell_events_rank_each_users_events_in_send_order():
    events = beam.cell_events(500, 1000, first_user=100, users=50, exponent=1.1, tag="t",
                              seed=1)
    assert events.keys == sorted(events.keys)  # send order is history order
    for user in np.unique(events.users):
        assert events.ranks[events.users == user].tolist() == list(
            range(1, int(np.sum(events.users == user)) + 1))


def test_freshness_counts_never_readable_events_as_infinitely_late():
    assert beam.freshness_percentiles(np.array([10.0, 20.0, 30.0])) == {
        "p50_ms": 20.0, "p99_ms": 30.0, "max_ms": 30.0}
    some_missing = np.array([10.0] * 98 + [np.nan] * 2)
    assert beam.freshness_percentiles(some_missing) == {
        "p50_ms": 10.0, "p99_ms": None, "max_ms": None}


def test_exit_counters_parse_the_stream_jobs_summary():
    log = ("stream job: mimn from redis bench:mimn; SIGTERM or Ctrl-C to stop\n\n"
           "stream job stopped after 12.5 s\n  applied          1,234\n"
           "  cas_conflicts       7\n")
    assert beam.exit_counters(log) == {"applied": 1234, "cas_conflicts": 7}
    assert beam.exit_counters("killed before its summary") == {}


def test_watch_waits_for_the_state_that_includes_each_event(redis_url):
    """The k-th event of a user is readable only once the state has k more events applied
    and its watermark has reached the event."""
    from uic.store import connect

    store = connect(redis_url)
    events = beam.cell_events(3, 1000, first_user=7, users=1, exponent=1.1, tag="w", seed=0)
    state = np.zeros(4, np.float32)
    # a state with one event whose watermark is already at the second event (a late first
    # event still to come): only the first event counts as readable
    store.write_state("mimn", 1, 7, state, 1, *events.keys[1])
    watch = beam.FreshnessWatch(store, "mimn", events)
    watch.sent = 3
    assert watch.poll_once()
    assert np.isfinite(watch.readable_ms).tolist() == [True, False, False]
    store.write_state("mimn", 1, 7, state, 3, *events.keys[2])
    watch.poll_once()
    assert np.isfinite(watch.readable_ms).tolist() == [True, True, True]
    assert not watch.poll_once()  # nothing outstanding any more
    store.client.close()


def test_stream_grid_counts_every_event(redis_url, tiny_exports, tmp_path):
    settings = beam.GridSettings(models=("mimn",), workers=(2,), rates=(400,), seconds=1.5,
                                 users=200, drain_seconds=20.0)
    records = beam.run_grid(redis_url, tiny_exports, tmp_path, settings)

    cell, jobs = records
    assert cell["bench"] == "beam_stream" and jobs["bench"] == "beam_stream_jobs"
    assert (cell["model"], cell["workers"], cell["offered_eps"]) == ("mimn", 2, 400)
    assert cell["events"] == 600
    # every event sent is in the states, none lost, none applied twice, all seen readable
    assert cell["applied"] == cell["events"] == cell["readable"]
    assert cell["unaccounted"] == cell["dead_lettered"] == cell["not_delivered"] == 0
    assert cell["pending_at_end"] == 0
    assert 0 <= cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"]
    assert cell["sent_eps"] > 0 and cell["applied_eps"] > 0
    assert cell["cas_conflicts"] >= 0
    assert set(beam.JOB_COUNTERS) <= set(jobs)
    assert jobs["applied"] >= cell["events"]  # the workers' exit summaries were read


def test_cli_has_help(capsys):
    with pytest.raises(SystemExit) as exc:
        beam.main(["--help"])
    assert exc.value.code == 0
    assert "--quick" in capsys.readouterr().out
