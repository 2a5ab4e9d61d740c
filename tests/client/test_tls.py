"""TLS and mutual TLS from the client: gRPC end to end against the real embedded model server
started with TF Serving's --ssl_config_file, and REST over HTTPS against a small real HTTPS
endpoint (TF Serving's REST port is plain HTTP; HTTPS is for a TLS-terminating proxy in
front of it). Certificates are made by trustme.

The TLS model server runs in this process: devkit's readiness check uses an insecure
channel, which a TLS server refuses.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading

import numpy as np
import pytest
import trustme
from google.protobuf import text_format

from client import InvalidRequest, ModelServerError, ModelServerUnavailable, Scorer
from client.__main__ import main
from client.tls import TlsConfig
from devkit.ports import free_port
from tests.client.conftest import CAND_CATES, CAND_ITEMS


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def pem_files(ca, tmp_path_factory):
    """CA, client certificate and key, and a certificate from another CA, as PEM files."""
    folder = tmp_path_factory.mktemp("pem")
    client_cert = ca.issue_cert("client@example.com", organization_unit_name="uic test client")
    stranger = trustme.CA()
    files = {"ca": folder / "ca.pem", "cert": folder / "client.pem", "key": folder / "client.key",
             "other_ca": folder / "other_ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client_cert.private_key_pem.write_to_path(str(files["key"]))
    stranger.cert_pem.write_to_path(str(files["other_ca"]))
    return files


@pytest.fixture(scope="module", params=[False, True], ids=["tls", "mutual_tls"])
def tls_server(request, ca, tiny_exports, tmp_path_factory, expected):
    """(requires a client certificate, gRPC port) of the embedded server with dien_head
    versions 1 and 2, in this process, gRPC over TLS only."""
    from model_server import flags
    from model_server.config import write_models_config
    from model_server.options import ServerOptions
    from model_server.protos import SSLConfig
    from model_server.server import ModelServer

    folder = tmp_path_factory.mktemp("tls_server")
    config = write_models_config(folder / "models.config", {
        "dien_head": {"base_path": tiny_exports / "dien_head", "policy": "all"}})
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ssl_config = SSLConfig(server_key=cert.private_key_pem.bytes().decode(),
                           server_cert=cert.cert_chain_pems[0].bytes().decode(),
                           custom_ca=ca.cert_pem.bytes().decode() if request.param else "",
                           client_verify=request.param)
    (folder / "ssl.config").write_text(text_format.MessageToString(ssl_config))
    port = free_port()
    server = ModelServer(ServerOptions.from_flags(flags.parse([
        f"--model_config_file={config}", f"--port={port}",
        f"--ssl_config_file={folder / 'ssl.config'}", "--file_system_poll_wait_seconds=0",
        "--xla_cpu_compilation_enabled=true"]))).start()
    yield request.param, port
    server.stop()


def _scorer(redis_url, port, tls, **kwargs) -> Scorer:
    return Scorer("dien", redis_url=redis_url, server=f"127.0.0.1:{port}", tls=tls,
                  deadline_ms=5000, **kwargs)


def test_grpc_over_tls_scores_like_the_full_model(tls_server, pem_files, expected,
                                                  seeded_store, redis_url):
    client_verify, port = tls_server
    tls = TlsConfig(pem_files["ca"], pem_files["cert"], pem_files["key"])
    with _scorer(redis_url, port, tls) as scorer:
        result = scorer.score(11, CAND_ITEMS, CAND_CATES)
    assert result.status == "fresh" and result.version == 1
    np.testing.assert_allclose(result.scores, expected.scores[("dien", 1, 11)], atol=1e-5)
    if not client_verify:  # plain TLS: no client certificate needed
        with _scorer(redis_url, port, TlsConfig(pem_files["ca"])) as scorer:
            np.testing.assert_allclose(scorer.score(11, CAND_ITEMS, CAND_CATES).scores,
                                       expected.scores[("dien", 1, 11)], atol=1e-5)


def test_grpc_tls_refusals(tls_server, pem_files, seeded_store, redis_url):
    """Plaintext to a TLS server, a server certificate from an untrusted CA, and (mutual
    TLS) no client certificate all fail as unavailable, never silently."""
    client_verify, port = tls_server
    refused = [None, TlsConfig(pem_files["other_ca"], pem_files["cert"], pem_files["key"])]
    if client_verify:
        refused.append(TlsConfig(pem_files["ca"]))
    for tls in refused:
        with _scorer(redis_url, port, tls, retries=0) as scorer, \
                pytest.raises(ModelServerUnavailable):
            scorer.score(11, CAND_ITEMS, CAND_CATES)


def test_cli_over_mutual_tls(tls_server, pem_files, expected, seeded_store, redis_url, capsys):
    _, port = tls_server
    code = main(["score", "--user", "12", "--items", ",".join(map(str, CAND_ITEMS)),
                 "--cates", ",".join(map(str, CAND_CATES)), "--redis_url", redis_url,
                 "--server", f"127.0.0.1:{port}", "--json", "--tls_ca", str(pem_files["ca"]),
                 "--tls_cert", str(pem_files["cert"]), "--tls_key", str(pem_files["key"])])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(result["scores"], expected.scores[("dien", 1, 12)], atol=1e-5)


class _PredictHandler(http.server.BaseHTTPRequestHandler):
    """Answers TF Serving's REST Predict with ctr = item id / 1000 per candidate, and records
    the path and the client certificate's subject."""

    protocol_version = "HTTP/1.1"
    seen: list

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        peer = self.connection.getpeercert()
        self.seen.append((self.path, dict(x[0] for x in peer["subject"]) if peer else None))
        items = np.asarray(body["inputs"]["cand_item_ids"], np.float64)
        answer = json.dumps({"outputs": (items / 1000.0).tolist()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module", params=[False, True], ids=["https", "mutual_https"])
def https_endpoint(request, ca):
    """(requires a client certificate, port, requests seen) of a real HTTPS Predict endpoint."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    if request.param:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    handler = type("Handler", (_PredictHandler,), {"seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield request.param, httpd.server_address[1], handler.seen
    httpd.shutdown()
    httpd.server_close()


def test_rest_over_https(https_endpoint, pem_files, seeded_store, redis_url):
    client_verify, port, seen = https_endpoint
    tls = TlsConfig(pem_files["ca"], pem_files["cert"], pem_files["key"])
    with _scorer(redis_url, port, tls, transport="rest") as scorer:
        result = scorer.score(11, CAND_ITEMS, CAND_CATES)
    np.testing.assert_allclose(result.scores, CAND_ITEMS / 1000.0, rtol=1e-6)
    path, subject = seen[-1]
    assert path == "/v1/models/dien_head/versions/1:predict"
    if client_verify:
        assert subject["organizationalUnitName"] == "uic test client"
    else:
        assert subject is None


def test_rest_https_refusals(https_endpoint, pem_files, seeded_store, redis_url):
    client_verify, port, _ = https_endpoint
    untrusted = TlsConfig(pem_files["other_ca"], pem_files["cert"], pem_files["key"])
    with _scorer(redis_url, port, untrusted, transport="rest") as scorer, \
            pytest.raises(ModelServerError, match="certificate is not trusted") as info:
        scorer.score(11, CAND_ITEMS, CAND_CATES)
    assert not isinstance(info.value, ModelServerUnavailable)  # not retried
    with _scorer(redis_url, port, None, transport="rest", retries=0) as scorer, \
            pytest.raises(ModelServerError):  # plain HTTP to an HTTPS port
        scorer.score(11, CAND_ITEMS, CAND_CATES)
    if client_verify:
        with _scorer(redis_url, port, TlsConfig(pem_files["ca"]), transport="rest",
                     retries=0) as scorer, pytest.raises(ModelServerUnavailable):
            scorer.score(11, CAND_ITEMS, CAND_CATES)


def test_tls_settings_errors(pem_files, tmp_path, capsys):
    with pytest.raises(InvalidRequest, match="both a certificate and its key"):
        TlsConfig(pem_files["ca"], cert_file=pem_files["cert"])
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    for tls, fragment in [(TlsConfig(tmp_path / "missing.pem"), "cannot read the CA"),
                          (TlsConfig(not_pem), "is not a PEM file"),
                          (TlsConfig(pem_files["ca"], pem_files["cert"], pem_files["ca"]),
                           "cannot load the TLS files")]:
        for transport in ("grpc", "rest"):
            if fragment == "cannot load the TLS files" and transport == "grpc":
                continue  # grpc checks the key pair at the handshake
            with pytest.raises(InvalidRequest, match=fragment):
                Scorer("dien", redis_url="redis://127.0.0.1:1/0", transport=transport, tls=tls)
    with pytest.raises(SystemExit) as info:
        main(["score", "--user", "1", "--items", "1", "--redis_url", "redis://127.0.0.1:1/0",
              "--tls_cert", str(pem_files["cert"])])
    assert info.value.code == 2
    assert "--tls_cert and --tls_key" in capsys.readouterr().err
