"""Real Redis for the tests: one redis-server per test session, a clean database per test.

Fixtures:
* ``redis_server``  (session)  - a started `devkit.redis_server.EmbeddedRedis`, ephemeral (no
  AOF): every test starts from FLUSHALL anyway, so persistence would only add fsyncs and
  AOF rewrites. Durability itself is tested in tests/foundation/test_embedded_redis.py.
* ``redis_url``     (function) - its URL (``redis://127.0.0.1:<port>/0``); FLUSHALL before each test
* ``redis_client``  (function) - a ``redis.Redis`` on that URL (binary replies)
* ``redis_cluster`` (session)  - a 3-node local Redis Cluster (`EmbeddedRedisCluster`,
  ephemeral), started on first use; tests that use it clean the keys they write.
"""

from __future__ import annotations

import pytest

from devkit.redis_server import EmbeddedRedis, EmbeddedRedisCluster
from uic.store import open_redis


@pytest.fixture(scope="session")
def redis_server():
    server = EmbeddedRedis(ephemeral=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    with redis_server.client() as client:
        client.flushall()
        client.script_flush()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url):
    client = open_redis(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster():
    cluster = EmbeddedRedisCluster(nodes=3, ephemeral=True).start()
    try:
        yield cluster
    finally:
        cluster.stop()
