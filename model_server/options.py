"""What the command line means to each part of the server, decided once in `main`.

`ServerOptions.from_flags(args)` refuses the flag combinations TF Serving refuses and turns
the parsed flags into one object. Each component then receives only its own part: the gRPC
front end `GrpcOptions`, the REST front end `RestOptions`, the model manager
`ManagerOptions`; the rest (config files, batching, TF threads) is the server's own.
Flag names and defaults: docs/model_server.md, 'Flags'.
"""

from __future__ import annotations

import argparse
import dataclasses

from model_server.errors import StartupError
from model_server.int_ranges import INT32_MAX, INT32_MIN
from model_server.limits import MIB, RequestLimits


@dataclasses.dataclass(frozen=True)
class GrpcOptions:
    """The gRPC listener and the answers of its servicers."""

    port: int = 8500                   # 0: no TCP listener (then socket_path is set)
    socket_path: str = ""              # also listen on this UNIX socket
    bind_address: str = "127.0.0.1"
    max_threads: int = 1
    channel_arguments: tuple[tuple[str, object], ...] = ()
    health_service: bool = False       # serve grpc.health.v1
    tensor_content: bool = False       # answer with tensor_content, not typed value fields
    max_receive_bytes: int = 64 * MIB
    ssl_config_file: str = ""          # TLS (mutual with client_verify) when set
    limits: RequestLimits = RequestLimits()


@dataclasses.dataclass(frozen=True)
class RestOptions:
    """The HTTP listener and its /v1 API."""

    port: int = 0                      # 0: no REST
    bind_address: str = "127.0.0.1"
    timeout_s: float | None = 30.0     # None: no deadline
    cors: bool = False
    max_body_bytes: int = 64 * MIB     # after gzip decompression
    num_threads: int = 4               # workers running requests
    max_connections: int = 512         # open sockets; more are closed at once
    header_timeout_s: float = 10.0     # request line + headers, and keep-alive idle time
    body_timeout_s: float = 30.0       # the whole body
    limits: RequestLimits = RequestLimits()


@dataclasses.dataclass(frozen=True)
class ManagerOptions:
    """How versions are found, loaded, warmed up and labelled."""

    file_system_poll_wait_seconds: float = 1
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    saved_model_tags: tuple[str, ...] = ("serve",)
    xla_cpu_compilation_enabled: bool = False  # else XLA-compiled models fail to load
    allow_version_labels_for_unavailable_models: bool = False


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Everything the flags decide, grouped by the component that uses it."""

    grpc: GrpcOptions
    rest: RestOptions
    manager: ManagerOptions
    model_config_file: str = ""
    model_name: str = "default"
    model_base_path: str = ""
    model_base_path_prefix: str = ""
    config_poll_seconds: float = 0     # >0: re-read model_config_file every N s
    enable_model_config_reload: bool = False  # gRPC HandleReloadConfigRequest, under prefix
    monitoring_config_file: str = ""
    enable_batching: bool = False
    batching_parameters_file: str = ""
    intra_op_threads: int = 0          # 0: TensorFlow's default
    inter_op_threads: int = 0
    max_concurrent_requests_per_model: int = 0  # 0: decided by the server (see flags)
    max_queued_requests_per_model: int = 8
    shutdown_grace_s: float = 10.0

    @classmethod
    def from_flags(cls, flags: argparse.Namespace) -> ServerOptions:
        """The options of `flags` (see model_server.flags); StartupError if they conflict."""
        _check(flags)
        limits = RequestLimits(max_tensor_bytes=flags.max_request_tensor_bytes,
                               max_candidates=flags.max_request_candidates)
        return cls(
            grpc=GrpcOptions(
                port=flags.port,
                socket_path=flags.grpc_socket_path,
                bind_address=flags.bind_address,
                max_threads=max(flags.grpc_max_threads, 1),
                channel_arguments=channel_arguments(flags.grpc_channel_arguments),
                health_service=flags.enable_grpc_healthcheck_service,
                tensor_content=flags.enable_serialization_as_tensor_content,
                max_receive_bytes=flags.grpc_max_receive_message_bytes,
                ssl_config_file=flags.ssl_config_file,
                limits=limits),
            rest=RestOptions(
                port=flags.rest_api_port,
                bind_address=flags.bind_address,
                timeout_s=(flags.rest_api_timeout_in_ms / 1000
                           if flags.rest_api_timeout_in_ms > 0 else None),
                cors=flags.rest_api_enable_cors_support,
                max_body_bytes=flags.rest_api_max_body_bytes,
                num_threads=flags.rest_api_num_threads,
                max_connections=flags.rest_api_max_connections,
                header_timeout_s=flags.rest_api_header_timeout_in_ms / 1000,
                body_timeout_s=flags.rest_api_body_timeout_in_ms / 1000,
                limits=limits),
            manager=ManagerOptions(
                file_system_poll_wait_seconds=flags.file_system_poll_wait_seconds,
                enable_model_warmup=flags.enable_model_warmup,
                num_request_iterations_for_warmup=max(
                    flags.num_request_iterations_for_warmup, 1),
                max_num_load_retries=flags.max_num_load_retries,
                load_retry_interval_micros=flags.load_retry_interval_micros,
                saved_model_tags=tuple(t.strip() for t in flags.saved_model_tags.split(",")
                                       if t.strip()),
                allow_version_labels_for_unavailable_models=(
                    flags.allow_version_labels_for_unavailable_models),
                xla_cpu_compilation_enabled=flags.xla_cpu_compilation_enabled),
            model_config_file=flags.model_config_file,
            model_name=flags.model_name,
            model_base_path=flags.model_base_path,
            model_base_path_prefix=flags.model_base_path_prefix,
            config_poll_seconds=flags.model_config_file_poll_wait_seconds,
            enable_model_config_reload=flags.enable_model_config_reload,
            monitoring_config_file=flags.monitoring_config_file,
            enable_batching=flags.enable_batching,
            batching_parameters_file=flags.batching_parameters_file,
            intra_op_threads=(flags.tensorflow_intra_op_parallelism
                              or flags.tensorflow_session_parallelism),
            inter_op_threads=(flags.tensorflow_inter_op_parallelism
                              or flags.tensorflow_session_parallelism),
            max_concurrent_requests_per_model=flags.max_concurrent_requests_per_model,
            max_queued_requests_per_model=flags.max_queued_requests_per_model,
            shutdown_grace_s=flags.shutdown_grace_period_in_ms / 1000,
        )


def _check(f: argparse.Namespace) -> None:
    if f.port == 0 and not f.grpc_socket_path:
        raise StartupError("--port must be non-zero when --grpc_socket_path is not set")
    if f.batching_parameters_file and not f.enable_batching:
        raise StartupError("--batching_parameters_file was given but batching is off: add "
                           "--enable_batching (or drop the file)")
    if f.use_alts_credentials and f.ssl_config_file:
        raise StartupError("Either use_alts_credentials must be false or ssl_config_file "
                           "must be empty.")
    if f.use_alts_credentials:
        raise StartupError("--use_alts_credentials is not supported by the embedded server; "
                           "use --ssl_config_file for TLS")
    if f.enable_model_config_reload and not f.model_base_path_prefix:
        raise StartupError("--enable_model_config_reload needs --model_base_path_prefix: "
                           "reloads may only load models from under that directory")
    positive = ("rest_api_num_threads", "rest_api_max_connections", "rest_api_max_body_bytes",
                "rest_api_header_timeout_in_ms", "rest_api_body_timeout_in_ms",
                "max_request_tensor_bytes", "max_request_candidates",
                "grpc_max_receive_message_bytes")
    for name in positive:
        if getattr(f, name) <= 0:
            raise StartupError(f"--{name} must be > 0, got {getattr(f, name)}")
    for name in ("max_concurrent_requests_per_model", "max_queued_requests_per_model",
                 "shutdown_grace_period_in_ms"):
        if getattr(f, name) < 0:
            raise StartupError(f"--{name} must be >= 0, got {getattr(f, name)}")
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


def channel_arguments(text: str) -> tuple[tuple[str, object], ...]:
    """`--grpc_channel_arguments` ("k=v,k2=v2"): int32 values as ints, others as strings."""
    out = []
    for pair in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in pair:
            raise StartupError(f"--grpc_channel_arguments: expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            number = int(value)
        except ValueError:
            out.append((key, value))
            continue
        out.append((key, number) if INT32_MIN <= number <= INT32_MAX else (key, value))
    return tuple(out)
