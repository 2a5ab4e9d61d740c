"""Calling TF Serving's Predict over gRPC (default) or REST, with a deadline and bounded retries.

Both transports split a call into `build()` (turn numpy inputs into the wire request; timed as
`build_ms`) and `call()` (send it, wait, decode the `ctr` output; timed as `rpc_ms`). The model
version is always pinned in the request (`model_spec.version` / `/versions/N` in the URL),
so the server can never answer with another version than the one the state was written for.

Retries: only UNAVAILABLE (server restarting, connection refused, batch queue full) is retried,
with a short backoff, and never past the call's deadline. Everything else (INVALID_ARGUMENT,
NOT_FOUND, DEADLINE_EXCEEDED, ...) fails at once with the server's message.

With a `TlsConfig`, gRPC uses a secure channel and REST uses HTTPS; the server's certificate
is verified (client/tls.py).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time

import grpc
import numpy as np

from client.errors import InvalidRequest, ModelServerError, ModelServerUnavailable
from client.protos import (
    PREDICT_METHOD,
    PredictRequest,
    PredictResponse,
    fill_tensor,
    tensor_to_numpy,
)
from client.tls import TlsConfig
from uic.contract import SIGNATURE_NAME

OUTPUT = "ctr"
TRANSPORTS = ("grpc", "rest")
DEFAULT_GRPC_PORT = 8500
DEFAULT_REST_PORT = 8501

# TF Serving's canonical-code to HTTP mapping, inverted (docs/model_server.md, the TF
# Serving conformance table).
_HTTP_TO_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def parse_target(server: str, default_port: int) -> tuple[str, int]:
    """'host:port' (or 'host', or ':port') -> (host, port), with a clear error otherwise."""
    host, sep, port = server.strip().rpartition(":")
    if not sep:
        host, port = port, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"server must be host:port with a port in 1-65535, got {server!r}")
    return host, int(port)


class _Retrying:
    """Shared retry loop: retries UNAVAILABLE with backoff while the deadline allows."""

    target: str
    retries: int
    backoff_s: float

    def call(self, request, deadline: float) -> tuple[np.ndarray, int]:
        """Send `request`; return (ctr scores, attempts). `deadline` is a perf_counter time."""
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise ModelServerError("DEADLINE_EXCEEDED", "client deadline passed before the "
                                       f"call could be sent (attempt {attempt})",
                                       target=self.target)
            try:
                return self._send(request, remaining), attempt
            except _Transient as err:
                pause = self.backoff_s * (2 ** (attempt - 1))
                if attempt > self.retries or time.perf_counter() + pause >= deadline:
                    raise ModelServerUnavailable(self.target, str(err), attempt) from None
                time.sleep(pause)

    def _send(self, request, timeout: float) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class _Transient(Exception):
    """A failure worth retrying (UNAVAILABLE)."""


class GrpcTransport(_Retrying):
    """One long-lived gRPC channel to PredictionService; safe to share between threads."""

    name = "grpc"

    def __init__(self, server: str, *, retries: int = 2, backoff_ms: float = 5.0,
                 tls: TlsConfig | None = None):
        host, port = parse_target(server, DEFAULT_GRPC_PORT)
        self.target = f"{host}:{port}"
        self.retries = retries
        self.backoff_s = backoff_ms / 1000.0
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.enable_retries", 0),  # retries are ours: bounded, UNAVAILABLE only
            # reconnect quickly after a server restart instead of backing off for minutes
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 30000),
        ]
        self._channel = (grpc.insecure_channel(self.target, options=options) if tls is None
                         else grpc.secure_channel(self.target, tls.grpc_credentials(), options))
        self._predict = self._channel.unary_unary(
            PREDICT_METHOD,
            request_serializer=PredictRequest.SerializeToString,
            response_deserializer=PredictResponse.FromString,
        )

    def build(self, model_name: str, version: int, inputs: dict[str, np.ndarray]):
        request = PredictRequest()
        spec = request.model_spec
        spec.name = model_name
        spec.version.value = version
        spec.signature_name = SIGNATURE_NAME
        for key, array in inputs.items():
            fill_tensor(request.inputs[key], array)
        return request

    def _send(self, request, timeout: float) -> np.ndarray:
        try:
            response = self._predict(request, timeout=timeout)
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise _Transient(f"UNAVAILABLE: {err.details()}") from None
            raise ModelServerError(code.name, err.details() or "", target=self.target) from None
        served = response.model_spec.version.value
        if response.model_spec.HasField("version") and served != request.model_spec.version.value:
            raise ModelServerError(
                "INTERNAL", f"asked for {request.model_spec.name} version "
                f"{request.model_spec.version.value} but the answer says version {served}",
                target=self.target)
        if OUTPUT not in response.outputs:
            raise ModelServerError("INTERNAL", f"response has no {OUTPUT!r} output; outputs: "
                                   f"{sorted(response.outputs)}", target=self.target)
        return tensor_to_numpy(response.outputs[OUTPUT])

    def close(self) -> None:
        self._channel.close()


class RestTransport(_Retrying):
    """TF Serving's REST API (`POST /v1/models/<name>/versions/<v>:predict`, columnar
    `inputs`), over one keep-alive HTTP connection per thread; HTTPS with a `TlsConfig`
    (TF Serving's REST port is plain HTTP: HTTPS is for a TLS-terminating proxy in front)."""

    name = "rest"

    def __init__(self, server: str, *, retries: int = 2, backoff_ms: float = 5.0,
                 tls: TlsConfig | None = None):
        self.host, self.port = parse_target(server, DEFAULT_REST_PORT)
        self.target = f"{self.host}:{self.port}"
        self.retries = retries
        self.backoff_s = backoff_ms / 1000.0
        self._ssl_context = None if tls is None else tls.ssl_context()
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def build(self, model_name: str, version: int, inputs: dict[str, np.ndarray]):
        body = {"signature_name": SIGNATURE_NAME,
                "inputs": {key: array.tolist() for key, array in inputs.items()}}
        path = f"/v1/models/{model_name}/versions/{int(version)}:predict"
        return path, json.dumps(body).encode()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = (http.client.HTTPConnection(self.host, self.port)
                    if self._ssl_context is None else
                    http.client.HTTPSConnection(self.host, self.port, context=self._ssl_context))
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _send(self, request, timeout: float) -> np.ndarray:
        path, body = request
        conn = self._connection()
        try:
            if conn.sock is None:
                conn.timeout = timeout
                conn.connect()
                # http.client sends headers and body in two writes: without NODELAY, Nagle
                # holds the body until the server's delayed ACK (~40 ms) of the headers
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(timeout)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        except TimeoutError:
            conn.close()
            raise ModelServerError("DEADLINE_EXCEEDED", "no answer before the deadline",
                                   target=self.target) from None
        except ssl.SSLCertVerificationError as err:  # does not go away on retry
            conn.close()
            raise ModelServerError(
                "UNAVAILABLE", f"the server's TLS certificate is not trusted ({err.verify_message});"
                " check --tls_ca (the CA that signed it) and the host name in --server",
                target=self.target) from None
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            conn.close()
            raise _Transient(f"{type(err).__name__}: {err}") from None
        if response.status != 200:
            try:
                message = json.loads(payload).get("error", payload.decode(errors="replace"))
            except ValueError:
                message = payload.decode(errors="replace")
            code = _HTTP_TO_CODE.get(response.status, f"HTTP_{response.status}")
            if code == "UNAVAILABLE":
                raise _Transient(f"HTTP 503: {message}")
            raise ModelServerError(code, f"HTTP {response.status}: {message}", target=self.target)
        try:
            outputs = json.loads(payload)["outputs"]
        except (ValueError, KeyError, TypeError):
            raise ModelServerError("INTERNAL", f"unexpected REST answer: {payload[:200]!r}",
                                   target=self.target) from None
        if isinstance(outputs, dict):  # several outputs: pick ours
            outputs = outputs.get(OUTPUT)
        return np.asarray(outputs, dtype=np.float32)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def make_transport(kind: str, server: str, **kwargs) -> GrpcTransport | RestTransport:
    """The transport `kind` ("grpc" or "rest") to `server`; kwargs: retries, backoff_ms, tls."""
    if kind == "grpc":
        return GrpcTransport(server, **kwargs)
    if kind == "rest":
        return RestTransport(server, **kwargs)
    raise InvalidRequest(f"transport must be one of {list(TRANSPORTS)}, got {kind!r}")
