"""Exactly-once states with the updater's real parts (tiny real exports, real Redis): racing
writers, lost races, redeliveries in any order, late, future and poison inputs, corrupt
stored states. The multi-process versions are in test_parallel_stream.py."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_jobs.updater import FUTURE, LATE, NO_LOG, UNDECIDABLE, StateUpdater
from uic.events import Event
from uic.store import connect as store_connect

from .conftest import assert_states_equal_tower, make_events

T0 = 1_500_000_000_000


def _updater(url, exports, **kw):
    return StateUpdater(store_connect(url), exports, "dien", 1, **kw)


def _user_events(user: int, n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    return [Event(user, rng.randrange(1, 300), rng.randrange(1, 20), "pv",
                  T0 + 1000 * i + rng.randrange(2), f"u{user}-e{i:03d}") for i in range(n)]


class _RacingStore:
    """The real store, with a real second writer that runs `intrude()` right before the
    first compare-and-set of this store: the worst moment for a lost update."""

    def __init__(self, store, intrude):
        self._store, self._intrude = store, intrude

    def __getattr__(self, name):
        return getattr(self._store, name)

    def compare_and_set_states(self, *args, **kwargs):
        if self._intrude is not None:
            intrude, self._intrude = self._intrude, None
            intrude()
        return self._store.compare_and_set_states(*args, **kwargs)


def test_a_writer_that_read_before_another_wrote_is_refused_and_redoes(redis_url,
                                                                        tiny_exports):
    events = _user_events(5, 6, seed=1)
    first = _updater(redis_url, tiny_exports)
    first.apply(events[:2])
    other = _updater(redis_url, tiny_exports)
    racing = StateUpdater(_RacingStore(store_connect(redis_url),
                                       lambda: other.apply([events[2], events[4]])),
                          tiny_exports, "dien", 1)
    # reads 2 events applied, folds e3 and e5; meanwhile `other` writes e2 and e4
    outcome = racing.apply([events[3], events[5]])
    assert outcome.cas_conflicts == 1 and not outcome.unapplied
    assert outcome.duplicates == 0  # nothing lost is ever called a duplicate
    assert_states_equal_tower(redis_url, tiny_exports, events)


def test_events_that_lose_every_race_stay_unapplied_then_apply(redis_url, tiny_exports):
    events = _user_events(6, 4, seed=2)
    _updater(redis_url, tiny_exports).apply(events[:1])
    store = store_connect(redis_url)

    class _AlwaysRacing(_RacingStore):
        def compare_and_set_states(self, *args, **kwargs):  # another writer every time
            cur = self._store.read_state("dien", 1, 6)
            self._store.write_state("dien", 1, 6, cur.state, cur.events_applied + 1,
                                    *cur.watermark)
            return self._store.compare_and_set_states(*args, **kwargs)

    loser = StateUpdater(_AlwaysRacing(store, None), tiny_exports, "dien", 1, max_attempts=3)
    outcome = loser.apply(events[1:])
    assert outcome.cas_conflicts == 3
    assert sorted(e.event_id for e in outcome.unapplied) == [e.event_id for e in events[1:]]
    assert outcome.applied == outcome.duplicates == 0
    # the intruder is gone: a clean state again, then the redelivered events apply exactly
    store.client.delete(store.state_key("dien", 1, 6))
    _updater(redis_url, tiny_exports).apply(events[:1])
    _updater(redis_url, tiny_exports).apply(outcome.unapplied)
    assert_states_equal_tower(redis_url, tiny_exports, events)


_round = itertools.count()


@settings(max_examples=12, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(order=st.randoms(use_true_random=False), repeats=st.lists(st.integers(1, 3),
       min_size=10, max_size=10), cuts=st.lists(st.integers(1, 5), min_size=1, max_size=8))
def test_any_order_and_duplicates_of_one_users_events(redis_server, tiny_exports, order,
                                                      repeats, cuts):
    """Ten events of one user, each sent 1-3 times, shuffled, cut into batches applied by
    two updaters in turn: the state is the tower over the ten, counted once each."""
    user = 10_000 + next(_round)
    events = _user_events(user, 10, seed=user)
    sent = [e for e, r in zip(events, repeats, strict=True) for _ in range(r)]
    order.shuffle(sent)
    updaters = [_updater(redis_server.url, tiny_exports) for _ in range(2)]
    start = 0
    outcomes = []
    for i, size in enumerate(itertools.cycle(cuts)):
        if start >= len(sent):
            break
        outcomes.append(updaters[i % 2].apply(sent[start:start + size]))
        start += size
    assert not any(o.refused or o.unapplied for o in outcomes)
    assert_states_equal_tower(redis_server.url, tiny_exports, events)
    # every delivery is counted exactly once: applied (incl. rebuild re-folds) or duplicate
    assert sum(o.duplicates for o in outcomes) + sum(o.applied for o in outcomes) >= len(sent)


def test_late_events_within_and_beyond_the_allowed_lateness(redis_url, tiny_exports):
    events = _user_events(7, 5, seed=3)
    updater = _updater(redis_url, tiny_exports, allowed_lateness_ms=10_000)
    updater.apply(events)
    last = events[-1].event_time_ms
    near = Event(7, 11, 3, "pv", last - 9_000, "near")
    far = Event(7, 12, 4, "pv", last - 11_000, "far")
    outcome = updater.apply([far, near])
    assert (outcome.late_applied, outcome.rebuilds, outcome.duplicates) == (1, 1, 0)
    assert [(r.event.event_id, r.kind) for r in outcome.refused] == [("far", LATE)]
    assert_states_equal_tower(redis_url, tiny_exports, events + [near])
    # the late event is now a duplicate, the refused one is still refused
    again = updater.apply([near, far])
    assert again.duplicates == 1 and [r.kind for r in again.refused] == [LATE]


def test_future_events_are_refused_and_do_not_poison_the_user(redis_url, tiny_exports):
    events = _user_events(8, 3, seed=4)
    updater = _updater(redis_url, tiny_exports, max_future_skew_ms=60_000)
    now = events[-1].event_time_ms + 1000
    future = Event(8, 9, 9, "pv", now + 61_000, "future")
    outcome = updater.apply(events[:2] + [future], now=now)
    assert [(r.event.event_id, r.kind) for r in outcome.refused] == [("future", FUTURE)]
    assert "ahead of now" in outcome.refused[0].reason
    outcome = updater.apply(events[2:], now=now)  # later events still apply
    assert outcome.applied == 1 and not outcome.refused
    assert_states_equal_tower(redis_url, tiny_exports, events)


def test_without_the_log_old_events_are_refused_never_counted_as_duplicates(redis_url,
                                                                            tiny_exports):
    events = _user_events(9, 4, seed=5)
    updater = _updater(redis_url, tiny_exports, with_behaviours=False)
    updater.apply(events[1:])
    outcome = updater.apply([events[0], events[-1]])
    assert outcome.duplicates == 1  # the watermark event itself
    assert [(r.event.event_id, r.kind) for r in outcome.refused] == [(events[0].event_id,
                                                                      NO_LOG)]


@pytest.mark.parametrize("damage", ["garbage", "wrong_size"])
def test_a_corrupt_stored_state_is_reported_and_rebuilt_from_the_log(damage, redis_url,
                                                                     tiny_exports):
    events = _user_events(4, 6, seed=6)
    updater = _updater(redis_url, tiny_exports)
    updater.apply(events[:4])
    store = store_connect(redis_url)
    key = store.state_key("dien", 1, 4)
    if damage == "garbage":
        store.client.set(key, b"UIS\x01garbage")
    else:
        read = store.read_state("dien", 1, 4)
        store.client.delete(key)
        store.write_state("dien", 1, 4, np.ones(3, np.float32), read.events_applied,
                          *read.watermark)
    outcome = updater.apply(events[4:])
    assert len(outcome.corrupt) == 1 and outcome.rebuilds == 1
    assert outcome.corrupt[0].key == key
    assert_states_equal_tower(redis_url, tiny_exports, events)


def test_events_of_a_user_past_the_log_window_are_undecidable_not_duplicates(redis_url,
                                                                             tiny_exports):
    events = _user_events(3, 8, seed=7)
    updater = _updater(redis_url, tiny_exports, behaviour_cap=4)
    updater.apply(events)
    outcome = updater.apply([events[0]])  # trimmed out of the 4 kept behaviours
    assert [r.kind for r in outcome.refused] == [UNDECIDABLE]
    assert outcome.duplicates == 0


def test_a_lost_race_past_the_log_window_is_dead_lettered_not_called_a_duplicate(
        redis_url, tiny_exports):
    """The writer logs its event, loses the race to one that folds a later event, and finds
    its own event at or below the new watermark in a log at the cap: the log cannot tell
    it from a folded one, so it is refused (dead-lettered), never acknowledged as a
    duplicate (which would lose it)."""
    events = _user_events(7, 11, seed=8)
    _updater(redis_url, tiny_exports, behaviour_cap=4).apply(events[:8])
    other = _updater(redis_url, tiny_exports, behaviour_cap=4)
    racing = StateUpdater(_RacingStore(store_connect(redis_url),
                                       lambda: other.apply([events[8], events[10]])),
                          tiny_exports, "dien", 1, behaviour_cap=4)
    outcome = racing.apply([events[9]])
    assert outcome.duplicates == 0
    assert [r.kind for r in outcome.refused] == [UNDECIDABLE]
    assert "--behaviour_cap" in outcome.refused[0].reason


def test_many_users_in_batches_equal_the_tower(redis_url, tiny_exports):
    events = make_events(seed=21, n=200, users=12)
    rng = random.Random(3)
    sent = events + rng.sample(events, 40)
    rng.shuffle(sent)
    updaters = [_updater(redis_url, tiny_exports) for _ in range(3)]
    for i in range(0, len(sent), 17):
        outcome = updaters[i % 3].apply(sent[i:i + 17])
        assert not outcome.refused and not outcome.unapplied
    assert_states_equal_tower(redis_url, tiny_exports, events)
