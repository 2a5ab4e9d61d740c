"""End to end: real Redis, the real model server (heads and full models, versions 1 and 2),
tiny real SavedModels. Expected scores come from the exports loaded in-process."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis

from client import (
    InvalidRequest,
    ModelServerError,
    ModelServerUnavailable,
    NotDeployed,
    Scorer,
    ScoreStatus,
    StateStoreUnavailable,
)
from devkit.redis_server import EmbeddedRedis
from tests.client.conftest import (
    CAND_CATES,
    CAND_ITEMS,
    HISTORY_LENGTHS,
    MODELS,
    UNKNOWN_USER,
    seed,
)
from uic.store import InterestStore, open_redis
from uic.store import connect as store_connect

TOL = 1e-5


def assert_close(actual, wanted):
    np.testing.assert_allclose(actual, wanted, rtol=0, atol=TOL)


def target(server, transport):
    return server.grpc_target if transport == "grpc" else f"127.0.0.1:{server.rest_port}"


@pytest.mark.parametrize("transport", ["grpc", "rest"])
@pytest.mark.parametrize("model", MODELS)
def test_head_on_stored_state_equals_full_model(server, expected, seeded_store, model, transport):
    with Scorer(model, store=seeded_store, server=target(server, transport),
                transport=transport, deadline_ms=5000) as scorer:
        for user, length in HISTORY_LENGTHS.items():
            b = scorer.score(user, CAND_ITEMS, CAND_CATES)
            a = scorer.score(user, CAND_ITEMS, CAND_CATES, arch="A")
            full = expected.scores[(model, 1, user)]
            assert_close(b.scores, full)                                # B == full, direct
            assert_close(a.scores, full)                                # A == full, direct
            assert_close(b.scores, a.scores)                            # B == A
            assert (b.status, a.status) == (ScoreStatus.FRESH, ScoreStatus.FRESH)
            assert (b.served_model, a.served_model) == (f"{model}_head", f"{model}_full")
            assert b.version == a.version == 1 and b.transport == transport
            assert b.events_applied == a.events_applied == length
            assert b.state_age_ms is not None and b.state_age_ms >= 0
            assert b.scores.dtype == np.float32 and b.scores.shape == CAND_ITEMS.shape
            for r in (a, b):
                assert min(r.redis_ms, r.build_ms, r.rpc_ms) > 0
                assert r.total_ms >= r.redis_ms + r.build_ms + r.rpc_ms - 1e-6


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_candidate_padding_is_invisible(server, expected, seeded_store, transport):
    """Any candidate count (padded on the wire to 8, 16, ..., 100, 200) gives one score per
    candidate, each the full model's score of that candidate."""
    full = expected.scores[("mimn", 1, 11)]
    with Scorer("mimn", store=seeded_store, server=target(server, transport),
                transport=transport, deadline_ms=5000) as scorer:
        for count in (1, 8, 9, 100, 101):
            pick = (np.arange(count) * 3 + 1) % len(CAND_ITEMS)  # first candidate not first
            for arch in ("B", "A"):
                r = scorer.score(11, CAND_ITEMS[pick], CAND_CATES[pick], arch=arch)
                assert r.scores.shape == (count,)
                assert_close(r.scores, full[pick])


def test_unknown_user_gets_the_cold_start_state(server, expected, seeded_store):
    with Scorer("dien", store=seeded_store, server=server.grpc_target, deadline_ms=5000) as s:
        b = s.score(UNKNOWN_USER, CAND_ITEMS, CAND_CATES)
        a = s.score(UNKNOWN_USER, CAND_ITEMS, CAND_CATES, arch="A")
    assert b.status == a.status == ScoreStatus.COLD_START
    assert b.state_age_ms is None and a.events_applied == 0
    assert_close(b.scores, expected.cold_scores[("dien", 1)])
    assert_close(a.scores, expected.cold_scores[("dien", 1)])


def test_emptied_redis_degrades_then_recovers_when_restored(server, expected, seeded_store):
    """Redis restarted without its data: the pointer, states and cold-start states are gone.
    A running client keeps answering with its cached cold-start state, marked degraded with
    the reason, and is fresh again once the data is restored."""
    with Scorer("dien", store=seeded_store, server=server.grpc_target, deadline_ms=5000,
                active_ttl_s=0.0) as scorer:
        assert scorer.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.FRESH
        seeded_store.client.flushall()
        empty = scorer.score(11, CAND_ITEMS, CAND_CATES)
        assert empty.status == ScoreStatus.DEGRADED
        assert "no active version" in empty.reason
        assert_close(empty.scores, expected.cold_scores[("dien", 1)])
        seed(seeded_store, expected)
        back = scorer.score(11, CAND_ITEMS, CAND_CATES)
        assert back.status == ScoreStatus.FRESH
        assert_close(back.scores, expected.scores[("dien", 1, 11)])


def test_not_found_after_a_flip_refreshes_the_cached_pointer_once(server, expected,
                                                                   seeded_store):
    """A cached pointer naming a version the server does not have (a roll-out moved on):
    the client re-reads the pointer once and scores with the version it names now."""
    from client import ModelServerError

    seeded_store.set_active_version("dien", 9)  # a version no server has
    with Scorer("dien", store=seeded_store, server=server.grpc_target, deadline_ms=5000,
                arch="A", active_ttl_s=600) as scorer:
        with pytest.raises(ModelServerError) as missing:  # the pointer still says 9
            scorer.score(11, CAND_ITEMS, CAND_CATES)
        assert missing.value.code == "NOT_FOUND"
        seeded_store.set_active_version("dien", 1)  # cached as 9 for another 600 s
        result = scorer.score(11, CAND_ITEMS, CAND_CATES)
    assert result.version == 1 and result.status == ScoreStatus.FRESH
    assert_close(result.scores, expected.scores[("dien", 1, 11)])


def test_old_state_is_reported_stale(server, seeded_store):
    with Scorer("mimn", store=seeded_store, server=server.grpc_target, deadline_ms=5000,
                stale_after_s=0.001) as scorer:
        time.sleep(0.01)
        assert scorer.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.STALE


@pytest.mark.parametrize("model", MODELS)
def test_version_flip_during_traffic_never_mixes_versions(server, expected, seeded_store,
                                                          model):
    # the test can only fail if the two versions disagree clearly
    for user in HISTORY_LENGTHS:
        gap = np.abs(expected.scores[(model, 1, user)] - expected.scores[(model, 2, user)])
        assert gap.max() > 100 * TOL
    stop = threading.Event()
    flips = [0]

    def flipper():
        store = store_connect(_url(seeded_store))
        while not stop.is_set():
            store.set_active_version(model, 2 if flips[0] % 2 == 0 else 1)
            flips[0] += 1
            time.sleep(0.002)
        store.client.close()

    thread = threading.Thread(target=flipper, daemon=True)
    seen = {1: 0, 2: 0}
    with Scorer(model, store=seeded_store, server=server.grpc_target, deadline_ms=5000,
                active_ttl_s=0.001) as scorer:
        thread.start()
        try:
            for i in range(240):
                user = list(HISTORY_LENGTHS)[i % len(HISTORY_LENGTHS)]
                arch = "A" if i % 4 == 3 else "B"
                result = scorer.score(user, CAND_ITEMS, CAND_CATES, arch=arch)
                assert result.status == ScoreStatus.FRESH
                assert_close(result.scores, expected.scores[(model, result.version, user)])
                seen[result.version] += 1
        finally:
            stop.set()
            thread.join()
    assert flips[0] > 10 and min(seen.values()) > 0, (flips, seen)


def _url(store: InterestStore) -> str:
    kw = store.client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def test_redis_stopped_during_a_run_degrades_then_recovers(server, expected, tmp_path):
    redis_server = EmbeddedRedis(data_dir=tmp_path / "r1").start()
    try:
        seed(store_connect(redis_server.url), expected)
        with Scorer("dien", redis_url=redis_server.url, server=server.grpc_target,
                    deadline_ms=5000, redis_timeout_ms=500, redis_retry_after_s=0.2) as scorer, \
             Scorer("dien", redis_url=redis_server.url, server=server.grpc_target,
                    deadline_ms=5000, fallback="error") as strict:
            assert scorer.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.FRESH
            assert strict.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.FRESH
            redis_server.stop()

            for arch in ("B", "A", "B"):
                r = scorer.score(11, CAND_ITEMS, CAND_CATES, arch=arch)
                assert r.status == ScoreStatus.DEGRADED and r.version == 1, r
                assert r.reason
                assert_close(r.scores, expected.cold_scores[("dien", 1)])
            for arch in ("B", "A"):
                with pytest.raises(StateStoreUnavailable, match="fallback is 'error'"):
                    strict.score(11, CAND_ITEMS, CAND_CATES, arch=arch)

            redis_server = EmbeddedRedis(port=redis_server.port,
                                         data_dir=tmp_path / "r2").start()
            seed(store_connect(redis_server.url), expected)
            deadline = time.monotonic() + 10
            while True:
                r = scorer.score(11, CAND_ITEMS, CAND_CATES)
                if r.status != ScoreStatus.DEGRADED or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status == ScoreStatus.FRESH
            assert_close(r.scores, expected.scores[("dien", 1, 11)])
            assert scorer.score(11, CAND_ITEMS, CAND_CATES, arch="A").status == ScoreStatus.FRESH
    finally:
        redis_server.stop()


BUSY_LUA = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= stop
return 1
"""


def _wait_until_blocked(url: str) -> None:
    """Return once Redis has stopped answering (it is inside the blocking script)."""
    probe = open_redis(url, socket_timeout_s=0.02, retries=0)
    try:
        for _ in range(500):
            try:
                probe.ping()
            except redis.TimeoutError:
                return
            time.sleep(0.005)
        raise AssertionError("Redis never started the blocking script")
    finally:
        probe.close()


def test_slow_redis_degrades_then_recovers(server, expected, seeded_store, redis_url):
    """Redis busy (a Lua script blocks it for 0.6 s) is 'slow': the read times out."""

    with Scorer("dien", redis_url=redis_url, server=server.grpc_target, deadline_ms=5000,
                redis_timeout_ms=50, redis_retry_after_s=0.05) as scorer:
        assert scorer.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.FRESH
        blocker = open_redis(redis_url)
        thread = threading.Thread(target=blocker.eval, args=(BUSY_LUA, 0, 600_000))
        thread.start()
        _wait_until_blocked(redis_url)
        r = scorer.score(11, CAND_ITEMS, CAND_CATES)
        thread.join()
        blocker.close()
        assert r.status == ScoreStatus.DEGRADED and "Timeout" in r.reason, r
        assert_close(r.scores, expected.cold_scores[("dien", 1)])
        time.sleep(2 * scorer.redis_retry_after_s)  # let the circuit breaker close
        r = scorer.score(11, CAND_ITEMS, CAND_CATES)
        assert r.status == ScoreStatus.FRESH
        assert_close(r.scores, expected.scores[("dien", 1, 11)])


def test_redis_down_before_anything_is_known_is_a_clear_error(server, expected):
    with EmbeddedRedis() as r:
        url = r.url
    with Scorer("dien", redis_url=url, server=server.grpc_target) as scorer:
        with pytest.raises(StateStoreUnavailable, match="no active version of 'dien' is known"):
            scorer.score(11, CAND_ITEMS, CAND_CATES)
    # a pinned version needs no pointer; B has no cold-start state cached, A needs none
    with Scorer("dien", redis_url=url, server=server.grpc_target, version=1,
                deadline_ms=5000, redis_retry_after_s=0) as scorer:
        with pytest.raises(StateStoreUnavailable, match="no cold-start state of dien version 1 "
                                                        "is cached"):
            scorer.score(11, CAND_ITEMS, CAND_CATES)
        r = scorer.score(11, CAND_ITEMS, CAND_CATES, arch="A")
        assert r.status == ScoreStatus.DEGRADED and "ConnectionError" in r.reason, r
        assert_close(r.scores, expected.cold_scores[("dien", 1)])


def test_corrupt_state_degrades_that_request_only(server, expected, seeded_store):
    key = seeded_store.state_key("dien", 1, 12)
    seeded_store.client.set(key, b"not a state")
    with Scorer("dien", store=seeded_store, server=server.grpc_target, deadline_ms=5000,
                redis_retry_after_s=600) as scorer:
        r = scorer.score(12, CAND_ITEMS, CAND_CATES)
        assert r.status == ScoreStatus.DEGRADED and key in r.reason, r
        assert_close(r.scores, expected.cold_scores[("dien", 1)])
        # a corrupt value is not an outage: the next user is read from Redis as usual
        assert scorer.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.FRESH


def test_redis_errors_that_are_not_outages_are_raised(server, expected, seeded_store):
    # a behaviour list of the wrong type: the operator must fix the data; no breaker
    seeded_store.client.set(seeded_store.behaviour_key(12), b"not a behaviour list")
    with Scorer("dien", store=seeded_store, server=server.grpc_target, deadline_ms=5000,
                redis_retry_after_s=600, arch="A") as scorer:
        with pytest.raises(StateStoreUnavailable, match="Redis error: .*WRONGTYPE"):
            scorer.score(12, CAND_ITEMS, CAND_CATES)
        assert scorer.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.FRESH
    # a wrong password (a ConnectionError in redis-py) is a configuration error, not an outage
    with EmbeddedRedis(password="s3cret") as guarded:
        seed(store_connect(guarded.url), expected)
        wrong = guarded.url.replace(":s3cret@", ":wrong@")
        with Scorer("dien", redis_url=wrong, server=server.grpc_target, version=1) as scorer:
            for arch in ("B", "A"):
                with pytest.raises(StateStoreUnavailable, match="rejected the credentials"):
                    scorer.score(11, CAND_ITEMS, CAND_CATES, arch=arch)


def test_model_server_stopped_gives_a_clear_error(small_server, seeded_store):
    seeded_store.set_active_version("dien", 2)  # the small server serves only the latest
    scorers = [Scorer("dien", store=seeded_store, server=target(small_server, transport),
                      transport=transport, deadline_ms=5000, retries=2)
               for transport in ("grpc", "rest")]
    for scorer in scorers:
        assert scorer.score(11, CAND_ITEMS, CAND_CATES).status == ScoreStatus.FRESH
    small_server.stop()
    for scorer in scorers:
        with pytest.raises(ModelServerUnavailable) as info:
            scorer.score(11, CAND_ITEMS, CAND_CATES)
        scorer.close()
        err = info.value
        assert err.attempts == 3 and err.code == "UNAVAILABLE"
        assert scorer.transport.target in str(err) and "Is it running?" in str(err)


@pytest.mark.parametrize("user", [-1, 2**63, "11", True, 1.5, None])
def test_bad_user_ids_are_rejected(seeded_store, server, user):
    with Scorer("dien", store=seeded_store, server=server.grpc_target) as scorer:
        with pytest.raises(InvalidRequest, match="user_id must be"):
            scorer.score(user, CAND_ITEMS, CAND_CATES)


@pytest.mark.parametrize("items, cates, fragment", [
    ([], None, "item_ids is empty"),
    (np.array([], np.int64), np.array([], np.int64), "item_ids is empty"),
    ([1, 2], [3], "got 2 item_ids but 1 cate_ids"),
    ([1.5, 2.0], None, "must hold integer ids"),
    ([[1, 2]], None, "flat list"),
    ([1, -2], None, "ids in \\[0, 2\\^63-1\\]"),
    (["1"], None, "must hold integer ids"),
])
def test_bad_candidates_are_rejected(seeded_store, server, items, cates, fragment):
    with Scorer("dien", store=seeded_store, server=server.grpc_target) as scorer:
        with pytest.raises(InvalidRequest, match=fragment):
            scorer.score(11, items, cates)


def test_missing_deployment_and_unknown_versions_are_clear(server, expected, redis_url):
    store = store_connect(redis_url)
    with Scorer("dien", store=store, server=server.grpc_target, deadline_ms=5000) as scorer:
        with pytest.raises(NotDeployed, match="no active version of 'dien'"):
            scorer.score(11, CAND_ITEMS, CAND_CATES)
    seed(store, expected)
    with Scorer("dien", store=store, server=server.grpc_target, version=7) as scorer:
        with pytest.raises(NotDeployed, match="uic:m:dien:7:cold"):
            scorer.score(11, CAND_ITEMS, CAND_CATES)
    # Redis knows version 3, the server does not: the server's NOT_FOUND comes through as is
    store.write_cold_start("dien", 3, expected.cold[("dien", 1)])
    with Scorer("dien", store=store, server=server.grpc_target, version=3,
                deadline_ms=5000) as scorer:
        with pytest.raises(ModelServerError) as info:
            scorer.score(11, CAND_ITEMS, CAND_CATES)
    assert info.value.code == "NOT_FOUND" and "dien_head" in str(info.value)
    # a state of the wrong size: INVALID_ARGUMENT, not retried
    store.write_state("dien", 1, 77, np.zeros(5, np.float32), 1, 1)
    with Scorer("dien", store=store, server=server.grpc_target, deadline_ms=5000) as scorer:
        with pytest.raises(ModelServerError) as info:
            scorer.score(77, CAND_ITEMS, CAND_CATES)
    assert info.value.code == "INVALID_ARGUMENT"
    store.client.close()
