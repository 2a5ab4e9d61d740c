"""uic/store.py against a real 3-node Redis Cluster (fixture `redis_cluster`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from redis.cluster import RedisCluster

from uic.events import Event
from uic.store import CorruptValue, StoreError
from uic.store import connect as store_connect

_ns = itertools.count()


@pytest.fixture
def cstore(redis_cluster):
    """A store on the cluster with its own namespace (the cluster is shared by the session)."""
    store = store_connect(redis_cluster.url, cluster=True, namespace=f"c{next(_ns)}")
    yield store
    store.client.close()


def vec(user: int, n: int) -> np.ndarray:
    return np.random.default_rng([user, n]).standard_normal(16).astype(np.float32)


def test_cluster_client_and_slots(cstore):
    assert isinstance(cstore.client, RedisCluster) and cstore.is_cluster
    slot = cstore.client.keyslot
    # every key of one user is on one slot; users spread over the 3 nodes
    assert slot(cstore.state_key("dien", 1, 42)) == slot(cstore.behaviour_key(42)) == slot(
        cstore.state_key("mimn", 9, 42))
    nodes = {cstore.client.get_node_from_key(cstore.state_key("dien", 1, u)).name
             for u in range(200)}
    assert len(nodes) == 3


def test_cluster_cas_batched_read_and_delete(cstore):
    users = list(range(300))
    assert all(cstore.write_states("dien", 1, [(u, vec(u, 2), 2, 20, "b") for u in users]))
    stale = cstore.write_states("dien", 1, [(u, vec(u, 1), 1, 10, "a") for u in users[:50]])
    assert not any(stale)
    assert cstore.write_state("dien", 1, 7, vec(7, 3), 3, 30, "c")
    got = cstore.read_states("dien", 1, users + [10_000])
    assert got[-1] is None
    for u, s in zip(users, got, strict=False):
        n = 3 if u == 7 else 2
        assert s.events_applied == n
        np.testing.assert_array_equal(s.state, vec(u, n))
    cstore.write_states("dien", 2, [(u, vec(u, 1), 1, 1, "") for u in users[:10]])
    cstore.write_cold_start("dien", 1, vec(0, 0))
    assert cstore.delete_version("dien", 1) == 301
    assert cstore.read_states("dien", 1, users[:20]) == [None] * 20
    assert all(s is not None for s in cstore.read_states("dien", 2, users[:10]))


def test_cluster_pointer_cold_start_and_behaviours(cstore):
    cstore.set_active_version("mimn", 4)
    assert cstore.get_active_version("mimn") == 4
    cstore.write_cold_start("mimn", 4, vec(1, 1))
    np.testing.assert_array_equal(cstore.read_cold_start("mimn", 4), vec(1, 1))
    events = [Event(user_id=u, item_id=1000 + i, category_id=i, behavior_type="pv",
                    event_time_ms=i, event_id=f"{u}-{i:03d}") for u in range(50) for i in range(1, 8)]
    assert cstore.append_behaviours(events, cap=5) == len(events)
    assert cstore.append_behaviours(events[-5:], cap=5) == 0
    items, cates, lens = cstore.read_behaviour_arrays(list(range(50)), length=6)
    assert (lens == 5).all()
    np.testing.assert_array_equal(items[:, :5], np.tile(np.arange(1003, 1008), (50, 1)))
    assert (items[:, 5] == 0).all()
    assert [e.item_id for e in cstore.read_behaviours(3, 2)] == [1006, 1007]


def test_cluster_corrupt_value(cstore):
    key = cstore.state_key("dien", 1, 5)
    cstore.client.set(key, b"junk")
    with pytest.raises(CorruptValue) as info:
        cstore.write_state("dien", 1, 5, vec(5, 1), 1, 1)
    assert info.value.key == key
    with pytest.raises(CorruptValue):
        cstore.read_states("dien", 1, [4, 5])


def test_standalone_client_on_a_cluster_is_a_clear_error(redis_cluster):
    with pytest.raises(StoreError, match="is a Redis Cluster node: pass cluster=True"):
        store_connect(redis_cluster.url)  # forgot cluster=True
    plain = store_connect(redis_cluster.url, check=False)
    users = range(50)  # some keys live on other nodes -> MOVED
    with pytest.raises(StoreError, match="cluster=True"):
        plain.read_states("dien", 1, users)


def test_cluster_batched_read_is_one_request_per_node(cstore, monkeypatch):
    from tests.foundation.test_store import _CountSends

    users = list(range(500))
    cstore.write_states("dien", 1, [(u, vec(u, 1), 1, 1, "") for u in users])
    cstore.read_states("dien", 1, users)  # warm connections to every node
    sends = _CountSends(monkeypatch)
    got = cstore.read_states("dien", 1, users)
    assert sends.calls == 3  # one pipelined request per node, all sent before any reply is read
    assert all(s.events_applied == 1 for s in got)


def test_cluster_streams_and_retirement(cstore):
    stream, dlq = "cluster-events", "cluster-events:dlq"
    slot = cstore.client.keyslot
    assert slot(stream) != slot(dlq)  # ack + dead letters span two slots, no MULTI
    try:
        ids = cstore.add_to_stream(stream, [{"event": f"e{i}"} for i in range(4)])
        cstore.create_group(stream, "g")
        assert [e.entry_id for e in cstore.read_new(stream, "g", "c", count=10)] == ids
        cstore.ack(stream, "g", ids[:3], dead_letters=[{"reason": "bad"}],
                   dead_letter_stream=dlq)
        assert cstore.pending_count(stream, "g") == 1
        assert [len(c) for c in cstore.replay_stream(dlq)] == [1]
    finally:
        cstore.client.delete(stream)
        cstore.client.delete(dlq)
    cstore.write_states("dien", 1, [(u, vec(u, 1), 1, 1, "") for u in range(40)])
    cstore.retire_version("dien", 1, 5)
    assert cstore.delete_retired_versions("dien", now_ms=5) == {1: 40}
    assert cstore.read_states("dien", 1, range(40)) == [None] * 40
