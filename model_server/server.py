"""The model server process: configs in, gRPC and REST out.

Startup order follows TF Serving: read and validate every config file, load the initial
models (ports stay closed until they are AVAILABLE), then open gRPC and REST. A startup
failure raises StartupError, which `main` prints as `Failed to start server. Error: ...`.
The server hands each component only what it needs: the manager gets ManagerOptions, the
metrics and the batch scheduler; the front ends get the manager, the metrics and their own
GrpcOptions or RestOptions (see model_server.options), plus the shared admission control
and readiness. Stopping drains: readiness turns NOT_SERVING, new requests are refused, and
requests in flight get the grace period to finish (docs/model_server.md, 'Overload and
shutdown').
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path

from model_server import config as cfg
from model_server.errors import ServingError, StartupError
from model_server.int_ranges import INT32_MAX
from model_server.options import ServerOptions

log = logging.getLogger("model_server")
VERSION = "2.21.0-uic-embedded"


def _read_config_file(read, path):
    """`read(path)` with a config error turned into a startup error."""
    try:
        return read(path)
    except cfg.ConfigError as exc:
        raise StartupError(str(exc)) from None


class ModelServer:
    """Embedded TF Serving. Usable in-process (tests, benchmarks) or via `python -m`."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc = None
        self._rest = None
        self._stop = threading.Event()
        self._config_thread = None
        self._config_text = None
        self.config_dir = (Path(options.model_config_file).resolve().parent
                           if options.model_config_file else None)
        self.initial_config = self._read_initial_config()
        self.prometheus_path = self._read_prometheus_path()
        self.ssl_config = (_read_config_file(cfg.read_ssl_config, options.grpc.ssl_config_file)
                           if options.grpc.ssl_config_file else None)
        batching_params = self._read_batching()
        self._configure_tf()

        from model_server.admission import Admission
        from model_server.manager import ModelManager
        from model_server.metrics import ServerMetrics
        from model_server.readiness import Readiness

        self.metrics = ServerMetrics() if self.prometheus_path is not None else None
        self.batching = None
        if options.enable_batching:
            from model_server.batching import BatchScheduler

            if batching_params is None:
                from model_server.protos import BatchingParameters

                batching_params = BatchingParameters()
                batching_params.thread_pool_name.value = "model_server_batch_threads"
            self.batching = BatchScheduler(batching_params, self.metrics)
        self.readiness = Readiness()
        self.admission = Admission(self._max_concurrent(), options.max_queued_requests_per_model)
        if self.metrics is not None:
            self.metrics.track_in_flight(self.admission.in_flight)
        self.manager = ModelManager(options.manager, self.metrics, self.batching, self.readiness)

    def _max_concurrent(self) -> int:
        """Slots per model: the flag, else 2 x cores, or with batching at least the requests
        one round of batches can take (so admission never starves the batcher)."""
        if self.options.max_concurrent_requests_per_model:
            return self.options.max_concurrent_requests_per_model
        slots = 2 * (os.cpu_count() or 1)
        if self.batching is not None:
            slots = max(slots, self.batching.max_batch_size * self.batching.num_threads)
        return slots

    # ------------------------------------------------------------------ configuration
    def _read_initial_config(self):
        o = self.options
        if o.model_config_file:
            config = _read_config_file(cfg.read_models_config, o.model_config_file)
            self._config_text = Path(o.model_config_file).read_text()
        else:
            config = cfg.single_model_config(o.model_name, o.model_base_path)
            if not os.path.isabs(o.model_base_path) and not cfg.is_uri(o.model_base_path):
                config = cfg.resolve_base_paths(config, os.getcwd())
        return self.resolve(config)

    def resolve(self, config):
        return cfg.resolve_base_paths(config, self.config_dir,
                                      self.options.model_base_path_prefix or None)

    def _read_prometheus_path(self) -> str | None:
        """The Prometheus page's path, or None when monitoring is off."""
        path = self.options.monitoring_config_file
        if not path:
            return None
        prom = _read_config_file(cfg.read_monitoring_config, path).prometheus_config
        if not prom.enable:
            return None
        page = prom.path or cfg.DEFAULT_PROMETHEUS_PATH
        if not page.startswith("/"):
            raise StartupError(f"{path}: prometheus_config.path must start with '/', got "
                               f"{prom.path!r}")
        return page

    def _read_batching(self):
        if not self.options.batching_parameters_file:
            return None
        return _read_config_file(cfg.read_batching_parameters,
                                 self.options.batching_parameters_file)

    def _configure_tf(self) -> None:
        intra, inter = self.options.intra_op_threads, self.options.inter_op_threads
        if intra or inter:
            import tensorflow as tf

            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(inter)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ModelServer:
        try:
            self.manager.apply_config(self.initial_config, initial=True)
        except ServingError as exc:
            raise StartupError(exc.message) from None
        self.manager.start_polling()
        self._start_grpc()
        self._start_rest()
        if self.options.model_config_file and self.options.config_poll_seconds > 0:
            self._config_thread = threading.Thread(target=self._poll_config, daemon=True,
                                                   name="config_poller")
            self._config_thread.start()
        return self

    def _start_grpc(self) -> None:
        import grpc

        from model_server.grpc_service import add_services

        g = self.options.grpc
        # channel arguments come last so they override, as in TF Serving
        channel_options = [("grpc.max_receive_message_length", g.max_receive_bytes),
                           ("grpc.max_send_message_length", INT32_MAX),
                           ("grpc.so_reuseport", 0), *g.channel_arguments]
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=g.max_threads,
                                                            thread_name_prefix="grpc"),
                                 options=channel_options)
        add_services(self._grpc, self.manager, self.metrics, g, self.reload_config_request,
                     self.admission)
        if g.health_service:
            self._add_health()
        credentials = self._grpc_credentials()
        listen = (self._grpc.add_insecure_port if credentials is None else
                  lambda address: self._grpc.add_secure_port(address, credentials))
        if g.port:
            try:
                self.grpc_port = listen(f"{g.bind_address}:{g.port}")
            except RuntimeError as exc:
                raise StartupError(f"cannot listen for gRPC on {g.bind_address}:{g.port}: "
                                   f"{exc}") from None
        if g.socket_path:
            listen(f"unix:{g.socket_path}")
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s:%s (%s) ...", g.bind_address, self.grpc_port,
                 "insecure" if credentials is None else
                 "mutual TLS" if self.ssl_config.client_verify else "TLS")

    def _grpc_credentials(self):
        """TF Serving's BuildServerCredentials: None (insecure) or SSL from the SSLConfig."""
        import grpc

        ssl = self.ssl_config
        if ssl is None:
            return None
        return grpc.ssl_server_credentials(
            [(ssl.server_key.encode(), ssl.server_cert.encode())],
            root_certificates=ssl.custom_ca.encode() or None,
            require_client_auth=ssl.client_verify)

    def _add_health(self) -> None:
        try:
            from grpc_health.v1 import health, health_pb2_grpc
        except ImportError:
            log.warning("--enable_grpc_healthcheck_service needs the grpcio-health-checking "
                        "package, which is not installed; health service not started")
            return
        servicer = health.HealthServicer()
        self.readiness.attach_health(servicer)  # per model name, the services and ""
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self._grpc)

    def _start_rest(self) -> None:
        r = self.options.rest
        if not r.port:
            return
        if r.port == self.options.grpc.port:
            log.error("--rest_api_port cannot be the same as --port. Please use a different "
                      "port for HTTP/REST API. Skipped exporting HTTP/REST API.")
            return
        from model_server.rest import RestServer

        try:
            self._rest = RestServer(r, self.manager, self.metrics, self.prometheus_path,
                                    self.admission, self.readiness)
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP on {r.bind_address}:{r.port}: "
                               f"{exc.strerror or exc}") from None
        self.rest_port = self._rest.server_address[1]
        self._rest.start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", r.bind_address, self.rest_port)

    def reload_config(self, config) -> None:
        """The config-file poller: the operator's file, relative paths resolved as at start.
        It does not wait for the loads (they report in the log and in model status), so a
        slow or failing load never holds up the next reload."""
        self.manager.apply_config(self.resolve(config), wait=False)

    def reload_config_request(self, config) -> None:
        """gRPC HandleReloadConfigRequest: anyone who reaches the port can send one, so it
        is off unless --enable_model_config_reload, and then every base path must be absolute
        (as in TF Serving) and lie under --model_base_path_prefix."""
        if not self.options.enable_model_config_reload:
            raise ServingError("PERMISSION_DENIED",
                               "HandleReloadConfigRequest is disabled on this server; start it "
                               "with --enable_model_config_reload and --model_base_path_prefix "
                               "to allow reloads, or edit --model_config_file with "
                               "--model_config_file_poll_wait_seconds")
        cfg.validate_config(config, self.manager.config)  # TF Serving's checks come first
        cfg.check_under_prefix(config, self.options.model_base_path_prefix)
        self.manager.apply_config(config)  # waits for new models without holding a lock

    def _poll_config(self) -> None:
        path = Path(self.options.model_config_file)
        period = self.options.config_poll_seconds
        failed = False
        while not self._stop.wait(period):
            try:
                text = path.read_text()
            except OSError as exc:
                log.error("cannot re-read %s: %s; keeping the current config", path, exc)
                continue
            if text == self._config_text and not failed:
                continue
            try:
                config = cfg.read_models_config(path)
                self.reload_config(config)
                self._config_text, failed = text, False
                log.info("Reloaded model config from %s", path)
            except (cfg.ConfigError, ServingError) as exc:
                failed = True
                self._config_text = text
                log.error("config reload from %s failed, keeping the current config: %s",
                          path, exc)

    def request_stop(self) -> None:
        """Make `wait()` return (signal handlers call this)."""
        self._stop.set()

    def wait(self) -> None:
        self._stop.wait()

    def stop(self) -> None:
        """Drain, then close: readiness NOT_SERVING and new requests refused at once,
        requests in flight get the grace period, then the listeners close."""
        self._stop.set()
        grace = self.options.shutdown_grace_s
        deadline = time.monotonic() + grace
        self.readiness.start_draining()
        if not self.admission.drain(grace):
            log.warning("%d request(s) still running after the %.1f s grace period "
                        "(--shutdown_grace_period_in_ms); they are cut off",
                        self.admission.in_flight(), grace)
        self.manager.stop()
        left = max(deadline - time.monotonic(), 0.0)
        if self._rest is not None:
            self._rest.stop(left)
        if self._grpc is not None:
            self._grpc.stop(grace=left).wait()
        if self.batching is not None:
            self.batching.stop()
