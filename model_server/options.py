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


@dataclasses.dataclass(frozen=True)
class RestOptions:
    """The HTTP listener and its /v1 API."""

    port: int = 0                      # 0: no REST
    bind_address: str = "127.0.0.1"
    timeout_s: float | None = 30.0     # None: no deadline
    cors: bool = False
    max_body_bytes: int = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ManagerOptions:
    """How versions are found, loaded, warmed up and labelled."""

    file_system_poll_wait_seconds: float = 1
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    saved_model_tags: tuple[str, ...] = ("serve",)
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
    monitoring_config_file: str = ""
    enable_batching: bool = False
    batching_parameters_file: str = ""
    intra_op_threads: int = 0          # 0: TensorFlow's default
    inter_op_threads: int = 0

    @classmethod
    def from_flags(cls, flags: argparse.Namespace) -> ServerOptions:
        """The options of `flags` (see model_server.flags); StartupError if they conflict."""
        _check(flags)
        return cls(
            grpc=GrpcOptions(
                port=flags.port,
                socket_path=flags.grpc_socket_path,
                bind_address=flags.bind_address,
                max_threads=max(flags.grpc_max_threads, 1),
                channel_arguments=channel_arguments(flags.grpc_channel_arguments),
                health_service=flags.enable_grpc_healthcheck_service,
                tensor_content=flags.enable_serialization_as_tensor_content),
            rest=RestOptions(
                port=flags.rest_api_port,
                bind_address=flags.bind_address,
                timeout_s=(flags.rest_api_timeout_in_ms / 1000
                           if flags.rest_api_timeout_in_ms > 0 else None),
                cors=flags.rest_api_enable_cors_support,
                max_body_bytes=flags.rest_api_max_body_bytes),
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
                    flags.allow_version_labels_for_unavailable_models)),
            model_config_file=flags.model_config_file,
            model_name=flags.model_name,
            model_base_path=flags.model_base_path,
            model_base_path_prefix=flags.model_base_path_prefix,
            config_poll_seconds=flags.model_config_file_poll_wait_seconds,
            monitoring_config_file=flags.monitoring_config_file,
            enable_batching=flags.enable_batching,
            batching_parameters_file=flags.batching_parameters_file,
            intra_op_threads=(flags.tensorflow_intra_op_parallelism
                              or flags.tensorflow_session_parallelism),
            inter_op_threads=(flags.tensorflow_inter_op_parallelism
                              or flags.tensorflow_session_parallelism),
        )


def _check(f: argparse.Namespace) -> None:
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
