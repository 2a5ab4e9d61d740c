"""The model server process: configs in, gRPC and REST out (reference §0).

Startup order follows TF Serving: read and validate every config file, load the initial
models (ports stay closed until they are AVAILABLE), then open gRPC and REST. A startup
failure raises StartupError, which `__main__` prints as `Failed to start server. Error: ...`.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from pathlib import Path

from model_server import config as cfg
from model_server.errors import ServingError

log = logging.getLogger("model_server")
VERSION = "2.21.0-uic-embedded"
INT32_MAX = 2**31 - 1


class StartupError(Exception):
    pass


def _channel_arguments(text: str) -> list[tuple[str, object]]:
    out = []
    for pair in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in pair:
            raise StartupError(f"--grpc_channel_arguments: expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            number = int(value)
            out.append((key, number) if -(2**31) <= number < 2**31 else (key, value))
        except ValueError:
            out.append((key, value))
    return out


class ModelServer:
    """Embedded TF Serving. Usable in-process (tests, benchmarks) or via `python -m`."""

    def __init__(self, flags):
        self.flags = flags
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc = None
        self._rest = None
        self._rest_thread = None
        self._stop = threading.Event()
        self._config_thread = None
        self._config_text = None
        self._reload_lock = threading.Lock()
        self._check_flags()
        self.config_dir = (Path(flags.model_config_file).resolve().parent
                           if flags.model_config_file else None)
        self.initial_config = self._read_initial_config()
        self.monitoring = self._read_monitoring()
        self.batching_params = self._read_batching()
        self._configure_tf()

        from model_server.manager import ManagerOptions, ModelManager
        from model_server.metrics import ServerMetrics

        self.metrics = ServerMetrics() if self.prometheus_path is not None else None
        self.batching = None
        if flags.enable_batching:
            from model_server.batching import BatchScheduler

            params = self.batching_params
            if params is None:
                from model_server.protos import BatchingParameters

                params = BatchingParameters()
                params.thread_pool_name.value = "model_server_batch_threads"
            self.batching = BatchScheduler(params, self.metrics)
        options = ManagerOptions(
            file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
            enable_model_warmup=flags.enable_model_warmup,
            num_request_iterations_for_warmup=max(flags.num_request_iterations_for_warmup, 1),
            max_num_load_retries=flags.max_num_load_retries,
            load_retry_interval_micros=flags.load_retry_interval_micros,
            saved_model_tags=tuple(t.strip() for t in flags.saved_model_tags.split(",")
                                   if t.strip()),
            allow_version_labels_for_unavailable_models=(
                flags.allow_version_labels_for_unavailable_models),
        )
        self.manager = ModelManager(options, self.metrics, self.batching)

    # ------------------------------------------------------------------ configuration
    def _check_flags(self) -> None:
        f = self.flags
        if f.port == 0 and not f.grpc_socket_path:
            raise StartupError("--port must be non-zero when --grpc_socket_path is not set")
        if f.batching_parameters_file and not f.enable_batching:
            raise StartupError("--batching_parameters_file was given but batching is off: add "
                               "--enable_batching (or drop the file)")
        if f.ssl_config_file or f.use_alts_credentials:
            raise StartupError("--ssl_config_file/--use_alts_credentials are not supported by "
                               "the embedded server; terminate TLS in front of it")
        if (f.tensorflow_session_parallelism and f.tensorflow_intra_op_parallelism
                and f.tensorflow_inter_op_parallelism):
            raise StartupError("Either use tensorflow_session_parallelism or "
                               "tensorflow_intra_op_parallelism, tensorflow_inter_op_parallelism "
                               "(not all three)")
        if not f.model_config_file and not f.model_base_path:
            raise StartupError("Both server_options.model_base_path and "
                               "server_options.model_config_file are empty! Pass "
                               "--model_config_file=models.config or --model_name and "
                               "--model_base_path")

    def _read_initial_config(self):
        f = self.flags
        try:
            if f.model_config_file:
                config = cfg.read_models_config(f.model_config_file)
                self._config_text = Path(f.model_config_file).read_text()
            else:
                config = cfg.single_model_config(f.model_name, f.model_base_path)
                if not os.path.isabs(f.model_base_path) and not cfg.is_uri(f.model_base_path):
                    config = cfg.resolve_base_paths(config, os.getcwd())
        except cfg.ConfigError as exc:
            raise StartupError(str(exc)) from None
        return self.resolve(config)

    def resolve(self, config):
        return cfg.resolve_base_paths(config, self.config_dir,
                                      self.flags.model_base_path_prefix or None)

    def _read_monitoring(self):
        self.prometheus_path = None
        if not self.flags.monitoring_config_file:
            return None
        try:
            monitoring = cfg.read_monitoring_config(self.flags.monitoring_config_file)
        except cfg.ConfigError as exc:
            raise StartupError(str(exc)) from None
        prom = monitoring.prometheus_config
        if prom.enable:
            self.prometheus_path = prom.path or cfg.DEFAULT_PROMETHEUS_PATH
            if not self.prometheus_path.startswith("/"):
                raise StartupError(f"{self.flags.monitoring_config_file}: prometheus_config.path "
                                   f"must start with '/', got {prom.path!r}")
        return monitoring

    def _read_batching(self):
        if not self.flags.batching_parameters_file:
            return None
        try:
            return cfg.read_batching_parameters(self.flags.batching_parameters_file)
        except cfg.ConfigError as exc:
            raise StartupError(str(exc)) from None

    def _configure_tf(self) -> None:
        f = self.flags
        intra = f.tensorflow_intra_op_parallelism or f.tensorflow_session_parallelism
        inter = f.tensorflow_inter_op_parallelism or f.tensorflow_session_parallelism
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
        if self.flags.model_config_file and self.flags.model_config_file_poll_wait_seconds > 0:
            self._config_thread = threading.Thread(target=self._poll_config, daemon=True,
                                                   name="config_poller")
            self._config_thread.start()
        return self

    def _start_grpc(self) -> None:
        import grpc

        from model_server.grpc_service import add_services

        f = self.flags
        options = [("grpc.max_receive_message_length", INT32_MAX),
                   ("grpc.max_send_message_length", INT32_MAX),
                   ("grpc.so_reuseport", 0)]
        options += _channel_arguments(f.grpc_channel_arguments)
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max(f.grpc_max_threads,
                                                                            1),
                                                            thread_name_prefix="grpc"),
                                 options=options)
        add_services(self._grpc, self)
        if f.enable_grpc_healthcheck_service:
            self._add_health()
        if f.port:
            try:
                self.grpc_port = self._grpc.add_insecure_port(f"{f.bind_address}:{f.port}")
            except RuntimeError as exc:
                raise StartupError(f"cannot listen for gRPC on {f.bind_address}:{f.port}: "
                                   f"{exc}") from None
        if f.grpc_socket_path:
            self._grpc.add_insecure_port(f"unix:{f.grpc_socket_path}")
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s:%s ...", f.bind_address, self.grpc_port)

    def _add_health(self) -> None:
        try:
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        except ImportError:
            log.warning("--enable_grpc_healthcheck_service needs the grpcio-health-checking "
                        "package, which is not installed; health service not started")
            return
        servicer = health.HealthServicer()
        for name in ("tensorflow.serving.ModelService", "tensorflow.serving.PredictionService"):
            servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self._grpc)

    def _start_rest(self) -> None:
        f = self.flags
        if not f.rest_api_port:
            return
        if f.rest_api_port == f.port:
            log.error("--rest_api_port cannot be the same as --port. Please use a different "
                      "port for HTTP/REST API. Skipped exporting HTTP/REST API.")
            return
        from model_server.rest import RestServer

        try:
            self._rest = RestServer((f.bind_address, f.rest_api_port), self,
                                    f.rest_api_max_body_bytes, self.prometheus_path)
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP on {f.bind_address}:{f.rest_api_port}: "
                               f"{exc.strerror or exc}") from None
        self.rest_port = self._rest.server_address[1]
        self._rest_thread = threading.Thread(target=self._rest.serve_forever, daemon=True,
                                             kwargs={"poll_interval": 0.2}, name="rest")
        self._rest_thread.start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", f.bind_address, self.rest_port)

    def reload_config(self, config) -> None:
        """HandleReloadConfigRequest and the config-file poller both land here."""
        with self._reload_lock:
            self.manager.apply_config(self.resolve(config))

    def _poll_config(self) -> None:
        path = Path(self.flags.model_config_file)
        period = self.flags.model_config_file_poll_wait_seconds
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

    def wait(self) -> None:
        self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
        self.manager.stop()
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        if self.batching is not None:
            self.batching.stop()
