"""Roll-out of a new version: backfill v+1 while v serves, flip only when v+1 is complete."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from beam_jobs import rollout
from beam_jobs.produce import produce
from uic.store import FlipRefused, min_retention_s
from uic.store import connect as store_connect

from .conftest import CommandLog, histories, tower_states, write_jsonl

V2_STATE = r"uic:\{u:\d+\}:s:dien:2"


def _rollout(url, exports, events_path, *extra):
    return rollout.main(["--model", "dien", "--events", str(events_path), "--saved_models",
                         str(exports), "--redis_url", url, *extra])


def test_rollout_flips_pointer_only_after_v2_is_complete(redis_url, tiny_exports,
                                                         events_data, tmp_path, capsys):
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
    assert "WARNING: --model_server not given" in capsys.readouterr().err
    # In the server's own order: every v2 state and the v2 cold-start state were written
    # while the pointer still said v1, then v2 was marked complete, and the pointer was set
    # exactly once, to 2, after them (inside the flip script).
    flips = log.positions("SET", 1, "uic:m:dien:active")
    assert [log.commands[i][2] for i in flips] == ["2"]
    state_writes = log.positions("EVALSHA", 3, V2_STATE)
    cold_writes = log.positions("SET", 1, "uic:m:dien:2:cold")
    complete = log.positions("HSET", 1, re.escape(store.complete_key("dien")))
    assert len({log.commands[i][3] for i in state_writes}) == len(users)
    assert cold_writes and max(state_writes + cold_writes) < complete[0] < flips[0]
    assert store.complete_versions("dien") == {2: len(users), 1: 0}  # v1 served: a target

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


def _assert_v2_equals_tower(store, exports, events) -> None:
    """Every user's v2 state counts the user's events, ends at the last one and equals
    the v2 tower over them (within 1e-5)."""
    hists = histories(events)
    expected = tower_states(exports, "dien", 2, hists)
    for user, hist in hists.items():
        got = store.read_state("dien", 2, user)
        assert got.events_applied == len(hist) and got.watermark == hist[-1].sort_key
        np.testing.assert_allclose(got.state, expected[user], atol=1e-5, rtol=0)


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
    _assert_v2_equals_tower(store, tiny_exports, events)
    assert store.get_active_version("dien") == 2
    assert store.read_state("dien", 1, events[0].user_id) is None  # retention 0: deleted
    assert store.stream_length("test:events") == len(events) + 1  # replayed, not consumed


def test_catch_up_while_paused_starts_where_the_first_one_stopped(
        redis_url, tiny_exports, tmp_path, monkeypatch, capsys):
    """Events that reach the stream after the first catch-up (here: while the model server
    is checked) reach v2 by the catch-up inside the pause, which replays only them."""
    from .conftest import make_events

    events = sorted(make_events(seed=5, n=60, users=5), key=lambda e: e.sort_key)
    logs = write_jsonl(tmp_path / "logs.jsonl", events[:20])
    store = store_connect(redis_url)
    store.set_active_version("dien", 1)
    produce(store, "test:events", [e.to_json() for e in events[:45]], progress=False)
    check = rollout.check_serving

    def check_while_more_events_arrive(*args):
        produce(store, "test:events", [e.to_json() for e in events[45:]], progress=False)
        check(*args)

    monkeypatch.setattr(rollout, "check_serving", check_while_more_events_arrive)
    assert _rollout(redis_url, tiny_exports, logs, "--stream", "test:events",
                    "--retention_seconds", "3600") == 0
    out = capsys.readouterr().out
    assert ("caught up from test:events (while the stream jobs run; after id start): "
            "{'entries': 45,") in out
    assert re.search(r"caught up from test:events \(while paused; after id \d+-\d+\): "
                     r"\{'entries': 15, 'applied': 15,", out)
    assert "stream jobs resumed" in out and store.client.get(store.pause_key("dien")) is None
    _assert_v2_equals_tower(store, tiny_exports, events)


def test_a_pause_waits_for_batches_in_hand_and_holds_new_ones(redis_url, tiny_exports):
    """The pause protocol on a real Redis with the real updater: a registered batch keeps
    the pause waiting; a new batch waits for the resume; a flip needs the pause to hold."""
    from beam_jobs.updater import StateUpdater

    from .conftest import make_events

    store = store_connect(redis_url)
    store.set_active_version("dien", 1)
    updater = StateUpdater(store, tiny_exports, "dien")
    events = make_events(seed=9, n=4, users=1)
    user = events[0].user_id
    updater.apply_between_pauses(events[:1])  # loads the model; registers and leaves
    assert store.busy_appliers("dien", int(time.time() * 1000)) == 0
    now = int(time.time() * 1000)
    assert store.enter_apply("dien", "batch-in-hand", now + 60_000) is None
    assert store.pause_appliers("dien", "token-1", 30_000)
    assert not store.pause_appliers("dien", "token-2", 30_000)  # one pause at a time
    assert store.busy_appliers("dien", now) == 1
    assert store.enter_apply("dien", "new-batch", now + 60_000) == "token-1"

    done = threading.Event()
    with CommandLog(redis_url) as log:
        waiting = threading.Thread(target=lambda: (updater.apply_between_pauses(events[1:]),
                                                   done.set()), daemon=True)
        waiting.start()
        give_up = time.monotonic() + 60
        while len(log.positions("EVALSHA", 3, re.escape(store.pause_key("dien")))) < 3:
            assert time.monotonic() < give_up, "the batch never asked whether it may apply"
            time.sleep(0.01)
        assert not done.is_set() and store.read_state("dien", 1, user).events_applied == 1
        store.leave_apply("dien", "batch-in-hand")
        assert store.busy_appliers("dien", int(time.time() * 1000)) == 0
        assert store.mark_version_complete("dien", 1, 1)
        with pytest.raises(FlipRefused, match="pause .* expired"):  # not our token
            store.flip_active_version("dien", 1, expected=1, pause_token="token-2")
        assert store.resume_appliers("dien", "token-1")
        waiting.join(60)
    assert done.is_set() and store.read_state("dien", 1, user).events_applied == len(events)
    # a batch whose job died holds its lease only until the lease ends
    assert store.enter_apply("dien", "dead-job", int(time.time() * 1000) - 1) is None
    assert store.busy_appliers("dien", int(time.time() * 1000)) == 0


def test_rollout_failure_keeps_old_version(redis_url, tiny_exports, tmp_path, capsys):
    store = store_connect(redis_url)
    store.set_active_version("dien", 1)
    code = _rollout(redis_url, tiny_exports, tmp_path / "nope.jsonl")
    assert code == 2 and "matched no files" in capsys.readouterr().err
    assert store.get_active_version("dien") == 1
    assert rollout.main(["--model", "dien", "--saved_models", str(tiny_exports),
                         "--redis_url", redis_url]) == 2
    assert "--events is required" in capsys.readouterr().err


def _two_versions(store, users=range(20)):
    """v1 and v2 states and cold starts for `users`, both complete; v2 active, v1 retired
    with its retention passed."""
    for version in (1, 2):
        store.write_states("dien", version, [(u, np.full(4, version, np.float32), 1, 1, "e")
                                             for u in users])
        store.write_cold_start("dien", version, np.zeros(4, np.float32))
        assert store.mark_version_complete("dien", version, len(users))
    store.set_active_version("dien", 2)
    store.retire_version("dien", 1, 0)


def test_rollback_cli_flips_back_and_keeps_the_old_version_long_enough(redis_url, capsys):
    store = store_connect(redis_url)
    _two_versions(store)
    before_ms = int(time.time() * 1000)
    argv = ["--model", "dien", "--redis_url", redis_url, "--rollback_to"]
    assert rollout.main([*argv, "1", "--retention_seconds", "1"]) == 0
    assert store.get_active_version("dien") == 1
    # v2 retired, for no less than the pointer cache plus requests in flight
    assert 1 not in store.retired_versions("dien")
    assert store.retired_versions("dien")[2] >= before_ms + min_retention_s() * 1000
    out = capsys.readouterr()
    assert "v2 -> v1" in out.out and "WARNING: --model_server not given" in out.err
    # a version without complete states is refused with what to do
    assert rollout.main([*argv, "5"]) == 2
    assert "v5 has no complete states" in capsys.readouterr().err
    assert store.get_active_version("dien") == 1


def test_cleanup_and_rollback_exclude_each_other(redis_url, monkeypatch, capsys):
    """Both orders, deterministically: a roll-back to v1 first makes the clean-up of v1 keep
    it; a clean-up that marked v2 deleting first (and died there) makes the roll-back to v2
    fail, and v2 never becomes a target again once deleted."""
    store = store_connect(redis_url)
    _two_versions(store)
    argv = ["--model", "dien", "--redis_url", redis_url, "--retention_seconds", "3600"]
    # roll-back first, then the clean-up of the same version (its retention has passed)
    assert rollout.main([*argv, "--rollback_to", "1"]) == 0
    assert store.delete_inactive_version("dien", 1) is None
    assert rollout.cleanup(store, "dien") == []
    assert all(s is not None for s in store.read_states("dien", 1, range(20)))
    assert store.retired_versions("dien").keys() == {2}

    # clean-up first: it marks v2 deleting, then dies before deleting anything
    def die(*args):
        raise RuntimeError("killed mid clean-up")

    monkeypatch.setattr(type(store), "delete_version", die)
    with pytest.raises(RuntimeError):
        store.delete_inactive_version("dien", 2)
    monkeypatch.undo()
    assert store.deleting_versions("dien").keys() == {2}
    assert 2 not in store.complete_versions("dien")  # dropped in the same step
    assert rollout.main([*argv, "--rollback_to", "2"]) == 2
    assert "no complete states" in capsys.readouterr().err
    store.client.hset(store.complete_key("dien"), "2", "20")  # even with a stray mark
    with pytest.raises(FlipRefused, match="a clean-up is deleting"):
        store.flip_active_version("dien", 2, expected=1)
    assert not store.mark_version_complete("dien", 2, 20)  # refused while deleting
    assert store.get_active_version("dien") == 1
    # the next clean-up finishes the job; v2 is gone for good
    store.retire_version("dien", 2, 0)
    assert rollout.cleanup(store, "dien") == [2]
    assert store.deleting_versions("dien") == {} and 2 not in store.complete_versions("dien")
    assert rollout.main([*argv, "--rollback_to", "2"]) == 2
    assert "no complete states" in capsys.readouterr().err
    assert store.get_active_version("dien") == 1


def test_flip_is_a_compare_and_set_of_the_pointer(redis_url):
    store = store_connect(redis_url)
    _two_versions(store)
    with pytest.raises(FlipRefused, match="active version changed") as refused:
        store.flip_active_version("dien", 1, expected=3)  # another roll-out flipped first
    assert refused.value.current == 2 and store.get_active_version("dien") == 2
    store.client.delete(store.cold_key("dien", 1))
    with pytest.raises(FlipRefused, match="no cold-start state"):
        store.flip_active_version("dien", 1, expected=2)
    store.client.delete(store.active_key("dien"))
    store.flip_active_version("dien", 2, expected=None)  # first flip: expects no pointer
    assert store.get_active_version("dien") == 2


def test_flip_scripts_on_redis_cluster(redis_cluster):
    """The pointer, completeness and deletion marks share one Cluster slot (hash tag)."""
    store = store_connect(redis_cluster.url, cluster=True, namespace="rollout")
    slot = store.client.keyslot
    assert slot(store.active_key("dien")) == slot(store.complete_key("dien")) == slot(
        store.deleting_key("dien"))
    try:
        _two_versions(store, users=range(5))
        store.flip_active_version("dien", 1, expected=2)
        assert store.get_active_version("dien") == 1
        assert store.delete_inactive_version("dien", 1) is None
        assert store.delete_inactive_version("dien", 2) == 6  # 5 states + cold start
        with pytest.raises(FlipRefused, match="no cold-start state"):
            store.flip_active_version("dien", 2, expected=1)
    finally:
        for key in store.client.scan_iter(match="*rollout*"):
            store.client.delete(key)
