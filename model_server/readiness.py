"""Which models are ready to serve, as the gRPC health service and REST status report it.

The manager reports each model as ready when a version is AVAILABLE. The gRPC health
service (grpc.health.v1, on with --enable_grpc_healthcheck_service) answers per model name,
for the two TF Serving services and for "" (the whole server). On SIGTERM the server starts
draining: every name turns NOT_SERVING and stays so, and REST status answers 503, so load
balancers stop sending traffic while admitted requests finish.
"""

from __future__ import annotations

import threading

SERVICES = ("", "tensorflow.serving.ModelService", "tensorflow.serving.PredictionService")


class Readiness:
    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict[str, bool] = {}
        self._health = None
        self.draining = False

    def attach_health(self, servicer) -> None:
        """Mirror readiness into a grpc_health.v1 HealthServicer."""
        with self._lock:
            self._health = servicer
            for name in SERVICES:
                self._set(name, True)
            for name, ready in self._models.items():
                self._set(name, ready)

    def set_model(self, name: str, ready: bool) -> None:
        with self._lock:
            self._models[name] = ready
            self._set(name, ready)

    def start_draining(self) -> None:
        with self._lock:
            self.draining = True
            if self._health is not None:
                self._health.enter_graceful_shutdown()  # every name NOT_SERVING, for good

    def _set(self, name: str, ready: bool) -> None:
        if self._health is None or self.draining:
            return
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse
        self._health.set(name, status.SERVING if ready else status.NOT_SERVING)
