"""Session fixtures for the model server tests: tiny SavedModels built once, and one shared
server hosting all of them (gRPC + REST + Prometheus) for the API tests."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest


@pytest.fixture(scope="session")
def server_models(tmp_path_factory):
    from tests.server.savedmodels import build_all

    return build_all(tmp_path_factory.mktemp("server_models"))


@pytest.fixture(scope="session")
def main_server(server_models, tmp_path_factory):
    """keras, multi, multiout, head (latest) and versioned (all; labels stable=1, canary=2)."""
    from tests.fixtures_server import start_model_server

    workdir = tmp_path_factory.mktemp("main_server")
    monitoring = workdir / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    models = {name: path for name, path in server_models.items()
              if name not in ("versioned", "xla_head", "slow")}
    models["versioned"] = {"base_path": server_models["versioned"], "policy": "all",
                           "labels": {"stable": 1, "canary": 2}}
    server = start_model_server(models, [f"--monitoring_config_file={monitoring}",
                                         "--rest_api_max_body_bytes=200000",
                                         "--rest_api_enable_cors_support",
                                         # TF Serving has no candidate limit: one test sends
                                         # 2M values (the limits: test_limits.py)
                                         "--max_request_candidates=2000000"], workdir)
    yield server
    server.stop()


class Http:
    """Plain HTTP/1.1 client on one keep-alive connection (reconnects when closed)."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.conn = None

    def request(self, method: str, path: str, body=None, headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return response.status, dict(response.getheaders()), data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body=None):
        status, _headers, data = self.request(method, path, body)
        return status, (json.loads(data) if data else None)

    def close(self):
        if self.conn is not None:
            self.conn.close()


@pytest.fixture()
def rest(main_server):
    client = Http(main_server.rest_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_channel(main_server):
    import grpc

    channel = grpc.insecure_channel(main_server.grpc_target, options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def predict_stub(grpc_channel):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(grpc_channel)


@pytest.fixture(scope="session")
def model_stub(grpc_channel):
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(grpc_channel)
