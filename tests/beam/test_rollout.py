"""Roll-out of a new version: backfill v+1 while v serves, flip only when v+1 is complete."""

from __future__ import annotations

import time

import numpy as np

from beam_jobs import rollout
from beam_jobs.produce import produce
from uic.store import connect as store_connect

from .conftest import CommandLog, histories, tower_states, write_jsonl

V2_STATE = r"uic:\{u:\d+\}:s:dien:2"


def _rollout(url, exports, events_path, *extra):
    return rollout.main(["--model", "dien", "--events", str(events_path), "--saved_models",
                         str(exports), "--redis_url", url, *extra])


def test_rollout_flips_pointer_only_after_v2_is_complete(redis_url, tiny_exports,
                                                         events_data, tmp_path):
    path, events = events_data
    hists = histories(events)
    users = sorted(hists)
    store = store_connect(redis_url)
    v1 = tower_states(tiny_exports, "dien", 1, hists)
    store.write_states("dien", 1, [(u, v1[u], len(h), *h[-1].sort_key)
                                   for u, h in hists.items()])
    store.set_active_version("dien", 1)

    with CommandLog(redis_url) as log:
        code = _rollout(redis_url, tiny_exports, path, "--retention_seconds", "3600")
    assert code == 0
    assert store.get_active_version("dien") == 2
    # In the server's own order: every v2 state and the v2 cold-start state were written
    # while the pointer still said v1, and the pointer was set exactly once, to 2, after them.
    flips = log.positions("SET", 1, "uic:m:dien:active")
    assert [log.commands[i][2] for i in flips] == ["2"]
    state_writes = log.positions("EVALSHA", 3, V2_STATE)
    cold_writes = log.positions("SET", 1, "uic:m:dien:2:cold")
    assert len({log.commands[i][3] for i in state_writes}) == len(users)
    assert cold_writes and max(state_writes + cold_writes) < flips[0]

    v2 = tower_states(tiny_exports, "dien", 2, hists)
    for user in users:
        np.testing.assert_allclose(store.read_state("dien", 2, user).state, v2[user], atol=1e-5)
    # v1 stays for the retention period (instant roll-back), then --cleanup removes it
    assert store.retired_versions("dien").keys() == {1}
    assert store.read_state("dien", 1, users[0]) is not None
    assert rollout.cleanup(store, "dien") == []
    assert rollout.cleanup(store, "dien", now_ms=int(time.time() * 1000) + 3_601_000) == [1]
    assert all(s is None for s in store.read_states("dien", 1, users))
    assert all(s is not None for s in store.read_states("dien", 2, users))
    assert store.retired_versions("dien") == {}
    # already active: nothing to do, nothing written
    with CommandLog(redis_url) as log:
        assert _rollout(redis_url, tiny_exports, path) == 0
    assert not log.positions("EVALSHA", 3, V2_STATE) and not log.positions("SET", 1, ".*")


def test_rollout_catches_up_from_the_stream_before_the_flip(redis_url, tiny_exports, tmp_path):
    """Logs hold the older half of the events, the stream all of them: after the roll-out
    v2 equals the tower on the full histories, and v1's retention 0 deletes it at once."""
    from .conftest import make_events

    events = sorted(make_events(seed=3, n=80, users=6), key=lambda e: e.sort_key)
    logs = write_jsonl(tmp_path / "logs.jsonl", events[:40])
    store = store_connect(redis_url)
    store.write_states("dien", 1, [(e.user_id, np.ones(4, np.float32), 1, *e.sort_key)
                                   for e in events[:1]])
    store.set_active_version("dien", 1)
    produce(store, "test:events", [e.to_json() for e in events] + ["not json"], progress=False)

    assert _rollout(redis_url, tiny_exports, logs, "--stream", "test:events",
                    "--retention_seconds", "0") == 0
    hists = histories(events)
    expected = tower_states(tiny_exports, "dien", 2, hists)
    for user, hist in hists.items():
        got = store.read_state("dien", 2, user)
        assert got.events_applied == len(hist) and got.watermark == hist[-1].sort_key
        np.testing.assert_allclose(got.state, expected[user], atol=1e-5, rtol=0)
    assert store.get_active_version("dien") == 2
    assert store.read_state("dien", 1, events[0].user_id) is None  # retention 0: deleted
    assert store.stream_length("test:events") == len(events) + 1  # replayed, not consumed


def test_rollout_failure_keeps_old_version(redis_url, tiny_exports, tmp_path, capsys):
    store = store_connect(redis_url)
    store.set_active_version("dien", 1)
    code = _rollout(redis_url, tiny_exports, tmp_path / "nope.jsonl")
    assert code == 2 and "matched no files" in capsys.readouterr().err
    assert store.get_active_version("dien") == 1
    assert rollout.main(["--model", "dien", "--saved_models", str(tiny_exports),
                         "--redis_url", redis_url]) == 2
    assert "--events is required" in capsys.readouterr().err
