"""uic/store.py against a real redis-server: CAS, batching, behaviours, version retirement,
event streams, auth, corruption."""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import random

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.redis_server import EmbeddedRedis
from uic import codec
from uic.codec import decode_state
from uic.events import Event
from uic.store import (
    CAS_SCRIPT,
    CONFLICT,
    CORRUPT,
    FORWARD_SCRIPT,
    WRITTEN,
    CasRow,
    CorruptState,
    CorruptValue,
    InterestStore,
    StoreError,
    StoreUnavailable,
    open_redis,
)
from uic.store import connect as store_connect


def state_for(user: int, applied: int, size: int = 8) -> np.ndarray:
    """A distinct, reproducible state per (user, events applied)."""
    return np.random.default_rng([user, applied]).standard_normal(size).astype(np.float32)


@pytest.fixture
def store(redis_url) -> InterestStore:
    return store_connect(redis_url)


def test_write_then_read(store):
    assert store.read_state("dien", 1, 5) is None
    assert store.write_state("dien", 1, 5, state_for(5, 3), 3, 1000, "e3") is True
    got = store.read_state("dien", 1, 5)
    np.testing.assert_array_equal(got.state, state_for(5, 3))
    assert (got.events_applied, got.last_event_time_ms, got.last_event_id) == (3, 1000, "e3")
    assert got.write_time_ms > 1_600_000_000_000
    # key layout of docs/store.md
    assert store.client.exists("uic:{u:5}:s:dien:1") == 1
    assert store.read_state("dien", 2, 5) is None  # versions are separate keys
    assert store.read_state("mimn", 1, 5) is None


def test_cas_keeps_the_state_with_most_events(store):
    assert store.write_state("dien", 1, 9, state_for(9, 5), 5, 500, "e5")
    assert not store.write_state("dien", 1, 9, state_for(9, 4), 4, 400, "e4")  # older
    assert not store.write_state("dien", 1, 9, state_for(9, 0), 5, 999, "other")  # not more
    assert store.write_state("dien", 1, 9, state_for(9, 6), 6, 600, "e6")
    got = store.read_state("dien", 1, 9)
    assert got.events_applied == 6 and got.last_event_id == "e6"
    np.testing.assert_array_equal(got.state, state_for(9, 6))


def test_forward_write_never_moves_the_watermark_time_back(store):
    assert store.write_state("dien", 1, 9, state_for(9, 2), 2, 500, "b")
    # more events but an older watermark: the defect of a count-only rule
    assert not store.write_state("dien", 1, 9, state_for(9, 3), 3, 400, "c")
    assert store.read_state("dien", 1, 9).last_event_time_ms == 500


def _row(user, applied, t, eid, expected):
    return CasRow(user, state_for(user, applied), applied, t, eid, expected)


def test_cas_writes_only_over_the_state_it_read(store):
    assert store.compare_and_set_states("dien", 1, [_row(4, 1, 10, "a", None)]) == [WRITTEN]
    read = store.read_state("dien", 1, 4)
    # a second writer that also read "absent" is refused (it would erase the first)
    assert store.compare_and_set_states("dien", 1, [_row(4, 2, 20, "b", None)]) == [CONFLICT]
    # two writers that read the same state: the first wins, the second must re-read,
    # even though it carries MORE events (the count-only rule would have let it erase)
    assert store.compare_and_set_states("dien", 1, [_row(4, 2, 20, "b", read)]) == [WRITTEN]
    assert store.compare_and_set_states("dien", 1, [_row(4, 3, 30, "c", read)]) == [CONFLICT]
    got = store.read_state("dien", 1, 4)
    assert (got.events_applied, got.watermark) == (2, (20, "b"))
    np.testing.assert_array_equal(got.state, state_for(4, 2))
    # same count, same time, other id: the header is compared byte-exactly, id included
    twin = dataclasses.replace(got, last_event_id="B")
    assert store.compare_and_set_states("dien", 1, [_row(4, 3, 30, "c", twin)]) == [CONFLICT]
    # a rebuild may keep the count and the watermark and change the state
    assert store.compare_and_set_states("dien", 1, [
        CasRow(4, state_for(4, 99), 2, 20, "b", got)]) == [WRITTEN]
    np.testing.assert_array_equal(store.read_state("dien", 1, 4).state, state_for(4, 99))


def test_cas_refuses_to_move_the_watermark_back(store):
    store.compare_and_set_states("dien", 1, [_row(6, 2, 50, "x", None)])
    read = store.read_state("dien", 1, 6)
    with pytest.raises(StoreError, match="never goes backwards"):
        store.compare_and_set_states("dien", 1, [_row(6, 3, 40, "y", read)])


def test_cas_reports_and_replaces_a_corrupt_value_only_when_expected(store):
    key = store.state_key("dien", 1, 7)
    store.client.set(key, b"garbage")
    assert store.compare_and_set_states("dien", 1, [_row(7, 1, 1, "a", None)]) == [CORRUPT]
    (seen,) = store.read_states("dien", 1, [7], on_corrupt="report")
    assert isinstance(seen, CorruptState) and seen.value == b"garbage" and seen.key == key
    other = CorruptState(key, "x", b"other garbage")
    assert store.compare_and_set_states("dien", 1, [_row(7, 1, 1, "a", other)]) == [CONFLICT]
    assert store.compare_and_set_states("dien", 1, [_row(7, 1, 1, "a", seen)]) == [WRITTEN]
    assert store.read_state("dien", 1, 7).events_applied == 1
    # a truncated value with a valid magic is corrupt too, never read past its end
    store.client.set(key, store.client.get(key)[:codec.HEADER_SIZE])  # id cut off
    assert store.compare_and_set_states("dien", 1, [_row(7, 2, 2, "b", None)]) == [CORRUPT]


def test_cas_header_offsets_follow_the_codec(store):
    """The script compares exactly codec.cas_header of what was read: flipping any byte of
    the stored header fields makes the same expectation a conflict."""
    store.compare_and_set_states("dien", 1, [_row(8, 5, 1234, "evt-5", None)])
    read = store.read_state("dien", 1, 8)
    key = store.state_key("dien", 1, 8)
    raw = store.client.get(key)
    header = codec.cas_header(5, 1234, "evt-5")
    assert raw[codec.EVENTS_APPLIED_OFFSET:codec.LAST_EVENT_TIME_OFFSET + 8] == header[:16]
    for offset in (codec.EVENTS_APPLIED_OFFSET, codec.LAST_EVENT_TIME_OFFSET + 7,
                   codec.HEADER_SIZE + 4):
        flipped = bytearray(raw)
        flipped[offset] ^= 1
        store.client.set(key, bytes(flipped))
        assert store.compare_and_set_states("dien", 1, [_row(8, 6, 2000, "e6", read)]) == [
            CONFLICT], offset
    store.client.set(key, raw)
    assert store.compare_and_set_states("dien", 1, [_row(8, 6, 2000, "e6", read)]) == [WRITTEN]


def _cas_incrementer(url: str, user: int, increments: int) -> None:
    """A read-modify-write loop: each success adds one event to the count."""
    store = store_connect(url)
    done = 0
    while done < increments:
        read = store.read_state("dien", 1, user)
        n = 0 if read is None else read.events_applied
        if store.compare_and_set_states("dien", 1, [
                CasRow(user, state_for(user, n + 1), n + 1, n + 1, f"e{n + 1:05d}", read)
        ]) == [WRITTEN]:
            done += 1


def test_concurrent_cas_writers_lose_no_increment(redis_url):
    """4 processes x 60 read-modify-write increments of one state: the count ends at 240.
    With a count-only rule, two writers that read N both write N+1 and one is lost."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_cas_incrementer, args=(redis_url, 3, 60)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = store_connect(redis_url).read_state("dien", 1, 3)
    assert got.events_applied == 240 and got.last_event_id == "e00240"


_users = itertools.count(1_000_000)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates=st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True),
       order=st.randoms(use_true_random=False), repeats=st.integers(1, 3))
def test_cas_any_order_any_repeats_ends_with_most_events(redis_server, updates, order, repeats):
    store = store_connect(redis_server.url)
    user = next(_users)
    sequence = [u for u in updates for _ in range(repeats)]
    order.shuffle(sequence)
    rows = [(user, state_for(user, n), n, n * 10, f"e{n:03d}") for n in sequence]
    # half one by one, half in one pipelined batch: both paths are CAS
    half = len(rows) // 2
    for row in rows[:half]:
        store.write_state("dien", 1, *row)
    store.write_states("dien", 1, rows[half:])
    got = store.read_state("dien", 1, user)
    best = max(updates)
    assert got.events_applied == best and got.last_event_id == f"e{best:03d}"
    np.testing.assert_array_equal(got.state, state_for(user, best))


def test_write_states_reports_each_row(store):
    store.write_state("dien", 1, 1, state_for(1, 5), 5, 5)
    result = store.write_states("dien", 1, [
        (1, state_for(1, 4), 4, 4, ""),   # stale
        (2, state_for(2, 1), 1, 1, ""),   # new user
        (1, state_for(1, 7), 7, 7, ""),   # newer
    ])
    assert result == [False, True, True]
    assert store.write_states("dien", 1, []) == []


def _writer(url: str, seed: int, users: int, max_events: int) -> None:
    store = store_connect(url)
    rng = random.Random(seed)
    rows = [(u, state_for(u, n), n, n, f"e{n}") for u in range(users) for n in range(1, max_events + 1)]
    rng.shuffle(rows)
    for start in range(0, len(rows), 37):
        store.write_states("mimn", 3, rows[start:start + 37])


def test_concurrent_writer_processes(redis_url):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(redis_url, seed, 40, 25)) for seed in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    states = store_connect(redis_url).read_states("mimn", 3, range(40))
    for user, got in enumerate(states):
        assert got.events_applied == 25 and got.last_event_id == "e25"
        np.testing.assert_array_equal(got.state, state_for(user, 25))


class _CountSends:
    """Counts request packets sent on client connections (one per round trip)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = redis.connection.AbstractConnection.send_packed_command

        def counting(conn, command, check_health=True):
            self.calls += 1
            return original(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)


def _cmdstats(client) -> dict[str, int]:
    return {k: v["calls"] for k, v in client.info("commandstats").items()}


def test_read_1000_users_is_one_round_trip(store, redis_client, monkeypatch):
    users = list(range(10_000, 11_000))
    store.write_states("dien", 7, [(u, state_for(u, 2, 600), 2, 2, "") for u in users[::2]])
    store.read_state("dien", 7, 1)  # warm the connection (no HELLO/AUTH in the measurement)
    before = _cmdstats(redis_client)
    sends = _CountSends(monkeypatch)
    got = store.read_states("dien", 7, users)
    monkeypatch.undo()
    after = _cmdstats(redis_client)
    assert sends.calls == 1
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["cmdstat_mget"] == 1
    assert delta.get("cmdstat_get", 0) == 0
    assert sum(v for k, v in delta.items() if k != "cmdstat_info") == 1
    assert [g is not None for g in got] == [u % 2 == 0 for u in users]
    np.testing.assert_array_equal(got[0].state, state_for(users[0], 2, 600))


def test_batched_write_is_one_round_trip(store, monkeypatch):
    store.read_state("dien", 1, 1)
    store.client.script_load(FORWARD_SCRIPT)
    store.client.script_load(CAS_SCRIPT)
    sends = _CountSends(monkeypatch)
    store.write_states("dien", 1, [(u, state_for(u, 1), 1, 1, "") for u in range(500)])
    assert sends.calls == 1
    got = store.compare_and_set_states("dien", 1, [
        CasRow(u, state_for(u, 1), 1, 1, "", None) for u in range(500, 1000)])
    assert sends.calls == 2 and got == [WRITTEN] * 500


def test_fp16_store_and_mixed_reads(redis_url):
    half = store_connect(redis_url, dtype="fp16")
    full = store_connect(redis_url)
    s = state_for(3, 1, 600)
    half.write_state("mimn", 1, 3, s, 1, 1)
    full.write_state("mimn", 1, 4, s, 1, 1)
    raw3 = full.client.get(full.state_key("mimn", 1, 3))
    raw4 = full.client.get(full.state_key("mimn", 1, 4))
    assert len(raw4) - len(raw3) == 600 * 2
    got3, got4 = full.read_states("mimn", 1, [3, 4])
    np.testing.assert_allclose(got3.state, s, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got4.state, s)


def test_active_version_and_cold_start(store):
    assert store.get_active_version("dien") is None
    store.set_active_version("dien", 3)
    assert store.get_active_version("dien") == 3
    assert store.client.get("uic:m:dien:active") == b"3"
    assert store.read_cold_start("dien", 3) is None
    cold = state_for(0, 0, 50)
    store.write_cold_start("dien", 3, cold)
    np.testing.assert_array_equal(store.read_cold_start("dien", 3), cold)
    assert store.client.exists("uic:m:dien:3:cold")


def test_ttl_applies_to_per_user_keys_only(redis_url):
    store = store_connect(redis_url, ttl_seconds=120)
    store.write_state("dien", 1, 8, state_for(8, 1), 1, 1)
    store.append_behaviours([Event(8, 1, 2, "pv", 10, "a")])
    store.write_cold_start("dien", 1, state_for(0, 0))
    store.set_active_version("dien", 1)
    assert 0 < store.client.ttl(store.state_key("dien", 1, 8)) <= 120
    assert 0 < store.client.ttl(store.behaviour_key(8)) <= 120
    assert store.client.ttl(store.cold_key("dien", 1)) == -1
    assert store.client.ttl(store.active_key("dien")) == -1


def test_delete_version_removes_only_that_version(store):
    rows = [(u, state_for(u, 1), 1, 1, "") for u in range(30)]
    store.write_states("dien", 1, rows)
    store.write_states("dien", 2, rows)
    store.write_states("mimn", 1, rows)
    store.write_cold_start("dien", 1, state_for(0, 0))
    assert store.delete_version("dien", 1) == 31
    assert store.read_states("dien", 1, range(30)) == [None] * 30
    assert all(s is not None for s in store.read_states("dien", 2, range(30)))
    assert all(s is not None for s in store.read_states("mimn", 1, range(30)))
    assert store.read_cold_start("dien", 1) is None


def ev(user, t, eid, item=100, cate=7, kind="pv"):
    return Event(user_id=user, item_id=item, category_id=cate, behavior_type=kind,
                 event_time_ms=t, event_id=eid)


def test_behaviours_ordered_capped_and_idempotent(store):
    events = [ev(1, 1000 + i, f"e{i:02d}", item=500 + i, cate=i % 3, kind=("pv", "buy")[i % 2])
              for i in range(12)]
    # same time: ordered by event id, even when the ids share a prefix
    events += [ev(1, 5000, "x", item=1), ev(1, 5000, "x1", item=2), ev(1, 5000, "w9", item=3)]
    assert store.append_behaviours(reversed(events), cap=10) == 15
    got = store.read_behaviours(1, 100)
    assert len(got) == 10
    assert [e.item_id for e in got[-3:]] == [3, 1, 2]  # w9 < x < x1
    assert got == sorted(events, key=lambda e: e.sort_key)[-10:]
    assert store.read_behaviours(1, 2) == got[-2:]
    # replay of the kept events changes nothing
    assert store.append_behaviours(got, cap=10) == 0
    assert store.read_behaviours(1, 100) == got
    assert store.read_behaviours(2, 5) == []


def test_behaviour_arrays_padded_one_round_trip(store, monkeypatch):
    store.append_behaviours([ev(u, 10 * i, f"{u}-{i}", item=u * 100 + i, cate=i)
                             for u in (1, 2) for i in range(1, 3 * u + 1)])
    store.read_behaviours(1, 1)
    sends = _CountSends(monkeypatch)
    items, cates, lens = store.read_behaviour_arrays([2, 9, 1], length=4)
    assert sends.calls == 1
    assert items.dtype == np.int64 and cates.dtype == np.int64 and lens.dtype == np.int32
    np.testing.assert_array_equal(lens, [4, 0, 3])
    np.testing.assert_array_equal(items, [[203, 204, 205, 206], [0, 0, 0, 0], [101, 102, 103, 0]])
    np.testing.assert_array_equal(cates, [[3, 4, 5, 6], [0, 0, 0, 0], [1, 2, 3, 0]])


def test_corrupt_values_raise_corrupt_value_naming_the_key(store):
    key = store.state_key("dien", 1, 77)
    store.client.set(key, b"not a state")
    with pytest.raises(CorruptValue) as info:
        store.read_state("dien", 1, 77)
    assert info.value.key == key and key in str(info.value)
    store.write_state("dien", 1, 78, state_for(78, 1), 1, 1)
    assert [s is not None for s in store.read_states("dien", 1, [77, 78], on_corrupt="none")] == [
        False, True]
    with pytest.raises(CorruptValue) as info:
        store.write_state("dien", 1, 77, state_for(77, 1), 1, 1)
    assert info.value.key == key
    assert store.client.get(key) == b"not a state"  # not overwritten silently
    store.client.set(store.active_key("dien"), b"v2")
    with pytest.raises(CorruptValue, match="uic:m:dien:active"):
        store.get_active_version("dien")
    store.client.zadd(store.behaviour_key(5), {b"junk": 1})
    with pytest.raises(CorruptValue, match=r"uic:\{u:5\}:b"):
        store.read_behaviours(5, 3)
    store.client.set(store.cold_key("dien", 1), b"UIS")
    with pytest.raises(CorruptValue, match="uic:m:dien:1:cold"):
        store.read_cold_start("dien", 1)
    # a wrong-type key is a clear error, not a crash
    store.client.lpush(store.state_key("dien", 1, 79), b"x")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.write_state("dien", 1, 79, state_for(79, 1), 1, 1)


def test_bad_arguments_are_clear_errors(store, redis_url):
    with pytest.raises(StoreError, match="model name"):
        store.read_state("di en", 1, 1)
    with pytest.raises(StoreError, match="user_id must be in"):
        store.read_state("dien", 1, -3)
    with pytest.raises(StoreError, match="version must be an integer"):
        store.write_state("dien", "1", 1, np.ones(3), 1, 1)
    with pytest.raises(StoreError, match="row 1 \\(user 2\\): .*NaN"):
        store.write_states("dien", 1, [(1, np.ones(2), 1, 1, ""), (2, np.array([np.nan]), 1, 1, "")])
    with pytest.raises(StoreError, match="expected \\(user_id"):
        store.write_states("dien", 1, [(1, np.ones(2), 1)])
    decoding = open_redis(redis_url)
    decoding.connection_pool.connection_kwargs["decode_responses"] = True  # a str client
    with pytest.raises(StoreError, match="decode_responses=False"):
        InterestStore(decoding)
    with pytest.raises(StoreError, match="dtype must be one of"):
        store_connect(redis_url, dtype="int8")
    with pytest.raises(StoreError, match="takes uic.events.Event"):
        store.append_behaviours([{"user_id": 1}])


@pytest.fixture(scope="module")
def auth_server():
    with EmbeddedRedis(password="right-pass") as server:
        c = server.client()
        c.execute_command("ACL", "SETUSER", "app", "on", ">app-pass", "~uic:*", "+@all")
        c.execute_command("ACL", "SETUSER", "reader", "on", ">read-pass", "~uic:*", "+@read",
                          "+ping")
        yield server


def test_password_and_acl_user(auth_server):
    port = auth_server.port
    ok = store_connect(f"redis://:right-pass@127.0.0.1:{port}/0")
    assert ok.write_state("dien", 1, 1, np.ones(4), 1, 1)
    app = store_connect(f"redis://app:app-pass@127.0.0.1:{port}/0")
    assert app.write_state("dien", 1, 1, np.ones(4), 2, 2)
    assert app.read_state("dien", 1, 1).events_applied == 2


@pytest.mark.parametrize("user", ["", "app", "nobody"])
def test_wrong_password_is_a_clear_error(auth_server, user):
    secret = f"not-the-pass-{user or 'default'}"
    with pytest.raises(StoreError) as info:
        store_connect(f"redis://{user}:{secret}@127.0.0.1:{auth_server.port}/0")
    text = str(info.value)
    assert "rejected the credentials" in text and "password" in text
    assert secret not in text and ":***@" in text  # the password is not echoed, the URL is


def test_missing_password_and_missing_permission(auth_server):
    with pytest.raises(StoreError, match="rejected the credentials"):
        store_connect(f"redis://127.0.0.1:{auth_server.port}/0")
    reader = store_connect(f"redis://reader:read-pass@127.0.0.1:{auth_server.port}/0")
    with pytest.raises(StoreError, match="lacks a permission"):
        reader.write_state("dien", 1, 1, np.ones(4), 9, 9)


def test_unreachable_server_is_a_clear_error():
    from devkit.ports import free_port

    with pytest.raises(StoreUnavailable, match="cannot reach Redis .*make redis-start"):
        store_connect(f"redis://127.0.0.1:{free_port()}/0", connect_timeout_s=1)


def test_a_server_that_stops_answering_is_unavailable(redis_url):
    """A Redis that hangs (CLIENT PAUSE) past the socket timeout: StoreUnavailable, which
    the stream job waits out, while a wrong password is a plain StoreError it reports."""
    store = store_connect(redis_url, socket_timeout_s=0.3, retries=0)
    admin = store_connect(redis_url)
    admin.client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    try:
        with pytest.raises(StoreUnavailable, match="cannot reach Redis"):
            store.read_state("dien", 1, 1)
    finally:
        admin.client.execute_command("CLIENT", "UNPAUSE")
    assert store.read_state("dien", 1, 1) is None  # the same store works again


def test_bad_credentials_are_not_unavailable(auth_server):
    with pytest.raises(StoreError) as info:
        store_connect(f"redis://:wrong@127.0.0.1:{auth_server.port}/0")
    assert not isinstance(info.value, StoreUnavailable)


def test_tls_to_a_plaintext_server_says_how_to_pass_the_ca(redis_server):
    with pytest.raises(StoreError) as info:
        store_connect(f"rediss://127.0.0.1:{redis_server.port}/0", connect_timeout_s=2,
                      socket_timeout_s=2, retries=0)
    text = str(info.value)
    assert text.startswith("TLS with Redis at rediss://127.0.0.1"), text
    assert "?ssl_ca_certs=/path/ca.pem" in text and "ssl_certfile" in text


def test_state_value_decodes_with_the_public_codec(store):
    store.write_state("dien", 4, 12, state_for(12, 1), 1, 77, "last")
    raw = store.client.get("uic:{u:12}:s:dien:4")
    assert decode_state(raw).last_event_id == "last"


def test_retire_and_delete_retired_versions(store):
    for version in (1, 2, 3):
        store.write_states("dien", version, [(u, state_for(u, 1), 1, 1, "") for u in range(10)])
    store.write_cold_start("dien", 1, state_for(0, 0))
    store.set_active_version("dien", 3)
    store.retire_version("dien", 1, 1000)
    store.retire_version("dien", 2, 5000)
    assert store.retired_versions("dien") == {1: 1000, 2: 5000}
    assert store.delete_retired_versions("dien", now_ms=999) == {}
    assert store.delete_retired_versions("dien", now_ms=1000) == {1: 11}  # 10 states + cold
    assert store.read_states("dien", 1, range(10)) == [None] * 10
    assert store.retired_versions("dien") == {2: 5000}
    store.set_active_version("dien", 2)  # rolled back before the deadline: kept, un-retired
    assert store.delete_retired_versions("dien", now_ms=10**13) == {}
    assert store.retired_versions("dien") == {}
    assert all(s is not None for s in store.read_states("dien", 2, range(10)))
    assert all(s is not None for s in store.read_states("dien", 3, range(10)))
    store.client.hset(store.retire_key("dien"), "v1", "soon")
    with pytest.raises(CorruptValue, match="uic:m:dien:retire"):
        store.retired_versions("dien")


def test_stream_group_read_claim_ack_and_dead_letters(store, monkeypatch):
    ids = store.add_to_stream("s", [{"event": f"e{i}"} for i in range(5)])
    assert len(ids) == 5 and store.stream_length("s") == 5
    assert store.create_group("s", "g") is True
    assert store.create_group("s", "g") is False  # exists: kept as it is
    new = store.read_new("s", "g", "c1", count=3)
    assert [e.entry_id for e in new] == ids[:3]
    assert [e.fields for e in new] == [{"event": b"e0"}, {"event": b"e1"}, {"event": b"e2"}]
    assert store.read_pending("s", "g", "c1", count=10) == new
    assert store.read_pending("s", "g", "c1", count=10, after=ids[1]) == new[2:]
    assert store.read_pending("s", "g", "c2", count=10) == []
    assert store.pending_count("s", "g") == 3

    sends = _CountSends(monkeypatch)
    store.ack("s", "g", ids[:2], dead_letters=[{"reason": "bad", "entry_id": ids[1]}],
              dead_letter_stream="s:dlq")
    assert sends.calls == 1  # dead letter and ack in one round trip, dead letter first
    monkeypatch.undo()
    assert store.pending_count("s", "g") == 1
    (dead,) = next(store.replay_stream("s:dlq"))
    assert dead.fields == {"reason": b"bad", "entry_id": ids[1].encode()}

    assert store.claim_idle("s", "g", "c2", min_idle_ms=3_600_000, count=10) == []
    claimed = store.claim_idle("s", "g", "c2", min_idle_ms=0, count=10)
    assert [e.entry_id for e in claimed] == [ids[2]]  # c1's pending entry now belongs to c2
    assert [e.entry_id for e in store.read_pending("s", "g", "c2", count=10)] == [ids[2]]
    assert [e.entry_id for e in store.read_new("s", "g", "c1", count=10, block_ms=1)] == ids[3:]
    assert store.read_new("s", "g", "c1", count=10, block_ms=1) == []
    store.client.xdel("s", ids[3])  # deleted while pending: only its id is left
    assert [(e.entry_id, e.fields) for e in store.read_pending("s", "g", "c1", count=10)] == [
        (ids[3], None), (ids[4], {"event": b"e4"})]
    with pytest.raises(StoreError, match="dead_letter_stream"):
        store.ack("s", "g", [], dead_letters=[{"reason": "x"}])
    with pytest.raises(StoreError, match="NOGROUP"):
        store.read_new("s", "nogroup", "c1", count=1)


def test_stream_add_in_chunks_trim_and_replay(store):
    ids = store.add_to_stream("r", ({"event": str(i)} for i in range(2500)))
    chunks = list(store.replay_stream("r", chunk=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert [e.entry_id for c in chunks for e in c] == ids
    assert [e.fields["event"] for e in chunks[2][-2:]] == [b"2498", b"2499"]
    assert [e.entry_id for c in store.replay_stream("r", after=ids[2497]) for e in c] == ids[2498:]
    assert list(store.replay_stream("missing")) == []


def test_maxlen_never_trims_entries_a_group_has_not_processed(store):
    ids = store.add_to_stream("t", ({"event": str(i)} for i in range(50)), maxlen=10)
    assert store.stream_length("t") == 50  # no group: every entry is unread, nothing goes
    store.create_group("t", "g", "0")
    read = store.read_new("t", "g", "c1", count=30)  # 30 delivered ...
    store.ack("t", "g", [e.entry_id for e in read[:20]])  # ... 20 of them acknowledged
    store.add_to_stream("t", ({"event": "late"} for _ in range(5)), maxlen=10)
    left = [e.entry_id for chunk in store.replay_stream("t") for e in chunk]
    assert left[0] == ids[20]  # the 20 processed entries went; the pending 10 stay
    assert len(left) == 35
    store.ack("t", "g", [e.entry_id for e in read[20:]])
    store.create_group("t", "slow", "0")  # a second group that has read nothing
    store.add_to_stream("t", [{"event": "x"}], maxlen=10)
    assert store.stream_length("t") == 36  # the slow group holds everything back
