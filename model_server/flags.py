"""`tensorflow_model_server`'s command line, parsed the way TF's Flags parser does.

Same names and defaults (docs/model_server.md, 'Flags'): non-bool flags take `--name=value` (or
`--name value`), bool flags take `--name`, `--name=true|false`. An argument that matches no
flag is reported (`unknown argument: ...`) and ignored, and the server still starts; a value
that does not parse exits with an error. A few flags are this server's own additions and say
so in their help. `model_server.options` turns the parsed flags into the server's options.
"""

from __future__ import annotations

import argparse
import os
import sys

from model_server.limits import DEFAULT_MAX_CANDIDATES, DEFAULT_MAX_TENSOR_BYTES, MIB

_CPUS = os.cpu_count() or 1

# (name, type, default, help)
FLAGS = (
    ("port", int, 8500, "gRPC TCP port; 0 disables TCP (then --grpc_socket_path is required)"),
    ("grpc_socket_path", str, "", "also serve gRPC on this UNIX socket"),
    ("rest_api_port", int, 0, "HTTP/REST port; 0 disables REST; must differ from --port"),
    ("rest_api_num_threads", int, 4 * _CPUS, "REST worker threads (requests run on these; "
     "waiting clients cost a socket, not a thread)"),
    ("rest_api_timeout_in_ms", int, 30000, "timeout of every REST inference (504 after it); "
     "<=0 means none"),
    ("rest_api_enable_cors_support", bool, False, "add CORS headers to /v1 responses"),
    ("model_name", str, "default", "single-model mode: served name (ignored with a config file)"),
    ("model_base_path", str, "", "single-model mode: base path holding numeric version dirs"),
    ("model_config_file", str, "", "text-format ModelServerConfig (models.config)"),
    ("model_config_file_poll_wait_seconds", float, 0, ">0: re-read the config file every N s"),
    ("file_system_poll_wait_seconds", float, 1, "poll base paths for versions every N s; 0 "
     "polls once at startup"),
    ("allow_version_labels_for_unavailable_models", bool, False,
     "let new labels point at versions that are not loaded yet"),
    ("enable_batching", bool, False, "batch requests server-side (BatchingSession)"),
    ("batching_parameters_file", str, "", "text-format BatchingParameters; requires "
     "--enable_batching"),
    ("enable_per_model_batching_parameters", bool, False,
     "read <version_dir>/batching_params.pbtxt instead of --batching_parameters_file"),
    ("monitoring_config_file", str, "", "text-format MonitoringConfig (Prometheus endpoint)"),
    ("enable_model_warmup", bool, True, "replay assets.extra/tf_serving_warmup_requests on load"),
    ("num_request_iterations_for_warmup", int, 0, "times each warm-up record runs (0 means 1)"),
    ("max_num_load_retries", int, 5, "retries after a failed load"),
    ("load_retry_interval_micros", int, 60_000_000, "wait between load retries"),
    ("num_load_threads", int, 0, "accepted; versions load one at a time"),
    ("num_unload_threads", int, 0, "accepted; unloads are immediate"),
    ("saved_model_tags", str, "serve", "comma-separated MetaGraph tags to load"),
    ("tensorflow_session_parallelism", int, 0, "sets TF inter/intra-op threads if >0"),
    ("tensorflow_intra_op_parallelism", int, 0, "TF intra-op threads (0: TF default)"),
    ("tensorflow_inter_op_parallelism", int, 0, "TF inter-op threads (0: TF default)"),
    ("tensorflow_session_config_file", str, "", "accepted and ignored"),
    ("platform_config_file", str, "", "accepted and ignored (only the tensorflow platform)"),
    ("ssl_config_file", str, "", "text-format SSLConfig (server_key, server_cert, custom_ca, "
     "client_verify): serve gRPC over TLS, mutual TLS with client_verify"),
    ("use_alts_credentials", bool, False, "not supported: the server refuses to start with it"),
    ("per_process_gpu_memory_fraction", float, 0, "accepted and ignored (CPU only)"),
    ("grpc_channel_arguments", str, "", "comma-separated k=v gRPC server arguments"),
    ("grpc_max_threads", int, 4 * _CPUS, "gRPC worker threads"),
    ("enable_signature_method_name_check", bool, False,
     "require classify/regress method names on classify/regress signatures"),
    ("enable_grpc_healthcheck_service", bool, False,
     "serve grpc.health.v1 (needs grpcio-health-checking; warned about otherwise)"),
    ("enable_profiler", bool, True, "accepted; no profiler service"),
    ("flush_filesystem_caches", bool, True, "accepted and ignored"),
    ("remove_unused_fields_from_bundle_metagraph", bool, True, "accepted and ignored"),
    ("prefer_tflite_model", bool, False, "accepted; TFLite is not supported"),
    ("enable_serialization_as_tensor_content", bool, False,
     "answer gRPC with tensor_content instead of typed value fields"),
    ("xla_cpu_compilation_enabled", bool, False, "run models compiled with XLA "
     "(jit_compile=True); without it such a model fails to load with a status saying so"),
    # --- this server's own flags ----------------------------------------------------
    ("bind_address", str, "127.0.0.1", "[embedded server only] address to listen on "
     "(TF Serving listens on all interfaces; use 0.0.0.0 for that)"),
    ("model_base_path_prefix", str, "", "[embedded server only] directory (or URI) that "
     "relative base_path entries are resolved against; default: the config file's directory. "
     "With --enable_model_config_reload, reloads may only name base paths under it"),
    ("enable_model_config_reload", bool, False, "[embedded server only] serve gRPC "
     "HandleReloadConfigRequest (off: PERMISSION_DENIED); needs --model_base_path_prefix"),
    ("rest_api_max_body_bytes", int, 64 * MIB,
     "[embedded server only] larger REST bodies (after gzip decompression) get 413"),
    ("rest_api_max_connections", int, 512, "[embedded server only] open REST connections "
     "beyond this are closed at once"),
    ("rest_api_header_timeout_in_ms", int, 10000, "[embedded server only] time a client has "
     "to send a request line and headers (also the keep-alive idle time)"),
    ("rest_api_body_timeout_in_ms", int, 30000, "[embedded server only] time a client has "
     "to send a request body"),
    ("max_request_tensor_bytes", int, DEFAULT_MAX_TENSOR_BYTES, "[embedded server only] "
     "decoded bytes of all input tensors of one request; checked before decoding"),
    ("max_request_candidates", int, DEFAULT_MAX_CANDIDATES, "[embedded server only] entries "
     "in any dimension a signature leaves free (candidates, rows), and tf.Examples per request"),
    ("grpc_max_receive_message_bytes", int, 64 * MIB, "[embedded server only] largest gRPC "
     "request (TF Serving: INT32_MAX; a grpc.max_receive_message_length channel argument "
     "overrides it)"),
    ("max_concurrent_requests_per_model", int, 0, "[embedded server only] requests of one "
     "model running at once (0: 2 x cores, or what one round of batches holds when batching "
     "is on)"),
    ("max_queued_requests_per_model", int, 2 * _CPUS, "[embedded server only] requests of "
     "one model waiting for a slot; more get RESOURCE_EXHAUSTED (REST 503) at once"),
    ("shutdown_grace_period_in_ms", int, 10000, "[embedded server only] on SIGTERM: health "
     "turns NOT_SERVING, new requests are refused, and requests in flight get this long to "
     "finish before the server exits"),
    ("log_level", str, "INFO", "[embedded server only] Python logging level"),
)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "t", "yes"):
        return True
    if lowered in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser(prog: str = "python -m model_server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Embedded TensorFlow Serving-compatible model server (gRPC "
                    "PredictionService/ModelService and the /v1 REST API). Flags are "
                    "tensorflow_model_server's.")
    parser.add_argument("--version", action="store_true",
                        help="print the server and TensorFlow versions and exit")
    for name, kind, default, help_text in FLAGS:
        if kind is bool:
            parser.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default,
                                metavar="true|false", help=f"{help_text} (default {default})")
        else:
            parser.add_argument(f"--{name}", type=kind, default=default,
                                help=f"{help_text} (default {default!r})")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    for arg in unknown:
        print(f"unknown argument: {arg}", file=sys.stderr)
    if unknown:
        parser.print_usage(sys.stderr)
    return args
