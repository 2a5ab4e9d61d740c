"""`make serve`: run the real `tensorflow_model_server` when it is on PATH, else this server.

Both get the same flags and the same serving_configs/. For the real binary, relative
base paths in models.config are rewritten to absolute ones in a temporary copy (TF Serving
rejects relative paths), and the embedded server's own flags are left out (TF Serving would
report them as unknown). Defaults match the tensorflow/serving Docker image (gRPC 8500,
REST 8501). A batching file without --enable_batching is dropped with a note, because TF
Serving refuses to start with that combination and batching is off by default. When the
newest export of any configured model is compiled with XLA, `--xla_cpu_compilation_enabled=true`
is added (TF Serving runs such models only with it).

`tensorflow_model_server` has no flag for the listen address: it always listens on every
interface. So the real binary runs only with `--bind_address=0.0.0.0` (saying that is
wanted); with the default loopback address `launch` stops and says what to do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

BINARY = "tensorflow_model_server"
ALL_INTERFACES = ("0.0.0.0", "::", "[::]")


def embedded_only_flags() -> list[str]:
    """The flags model_server adds to TF Serving's (their help says so)."""
    from model_server.flags import FLAGS

    return [name for name, _kind, _default, text in FLAGS
            if text.startswith("[embedded server only]")]


def _value(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _drop(args: list[str], name: str) -> list[str]:
    return [a for a in args if not (a == f"--{name}" or a.startswith(f"--{name}="))]


def _enabled(args: list[str], name: str) -> bool:
    for arg in args:
        if arg == f"--{name}":
            return True
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1].lower() in ("true", "1", "t", "yes")
    return False


def absolute_config(config_file: str, prefix: str | None = None) -> Path:
    """A temporary copy of models.config with every base_path absolute."""
    from google.protobuf import text_format

    from model_server.config import read_models_config_resolved

    config = read_models_config_resolved(config_file, prefix)
    handle, path = tempfile.mkstemp(prefix="models_abs_", suffix=".config")
    with os.fdopen(handle, "w") as out:
        out.write(text_format.MessageToString(config))
    return Path(path)


def _warn_missing_versions(config_file: str, prefix: str | None) -> None:
    from model_server.config import list_versions, read_models_config_resolved

    try:
        config = read_models_config_resolved(config_file, prefix)
    except Exception as exc:  # noqa: BLE001 - the server reports it properly
        print(f"launch: {exc}", file=sys.stderr)
        return
    for entry in config.model_config_list.config:
        if not list_versions(entry.base_path):
            print(f"launch: no numeric version directory under {entry.base_path} for model "
                  f"{entry.name}; the server waits for one (run `make export` first)",
                  file=sys.stderr)


def exports_use_xla(config_file: str, prefix: str | None = None) -> bool:
    """Whether the newest version of any model in the config was compiled with XLA, so the
    server needs --xla_cpu_compilation_enabled=true (TF Serving's default is false)."""
    from model_server.config import list_versions, read_models_config_resolved
    from model_server.errors import ServingError
    from model_server.servable import read_meta_graph, uses_xla

    try:
        config = read_models_config_resolved(config_file, prefix)
    except Exception:  # noqa: BLE001 - the server reports a bad config properly
        return False
    for entry in config.model_config_list.config:
        versions = list_versions(entry.base_path) or {}
        if not versions:
            continue
        try:
            if uses_xla(read_meta_graph(versions[max(versions)], {"serve"})):
                return True
        except ServingError:
            continue
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_server.launch",
        description="Run tensorflow_model_server if installed, else the embedded server, with "
                    "the given TF Serving flags (all flags are passed through).")
    parser.add_argument("--embedded", action="store_true",
                        help="use the embedded server even if the real binary is on PATH")
    ours, args = parser.parse_known_args(argv)
    args = list(args)
    if _value(args, "port") is None:
        args.append("--port=8500")
    if _value(args, "rest_api_port") is None:
        args.append("--rest_api_port=8501")
    if _value(args, "batching_parameters_file") and not _enabled(args, "enable_batching"):
        print("launch: batching is off (TF Serving's default); ignoring "
              "--batching_parameters_file. Add --enable_batching to use it (see "
              "docs/model_server.md, 'Batching').", file=sys.stderr)
        args = _drop(args, "batching_parameters_file")
    config_file = _value(args, "model_config_file")
    prefix = _value(args, "model_base_path_prefix")
    if config_file:
        _warn_missing_versions(config_file, prefix)
        if _value(args, "xla_cpu_compilation_enabled") is None and \
                "--xla_cpu_compilation_enabled" not in args and \
                exports_use_xla(config_file, prefix):
            print("launch: the exports are compiled with XLA; passing "
                  "--xla_cpu_compilation_enabled=true", file=sys.stderr)
            args.append("--xla_cpu_compilation_enabled=true")
    binary = shutil.which(BINARY)
    if binary and not ours.embedded:
        bind = _value(args, "bind_address") or "127.0.0.1"
        if bind not in ALL_INTERFACES:
            print(f"launch: {binary} cannot listen on {bind} only: it has no bind-address "
                  f"flag and listens on every interface. Pass --bind_address=0.0.0.0 to run "
                  f"it that way (then firewall ports 8500/8501), or --embedded to run the "
                  f"embedded server on {bind}.", file=sys.stderr)
            return 2
        for name in embedded_only_flags():
            args = _drop(args, name)
        if config_file:
            args = _drop(args, "model_config_file")
            args.append(f"--model_config_file={absolute_config(config_file, prefix)}")
        print(f"launch: exec {binary} {' '.join(args)}", file=sys.stderr)
        os.execv(binary, [binary, *args])
    print(f"launch: {BINARY} not found on PATH; starting the embedded server "
          f"(python -m model_server {' '.join(args)})", file=sys.stderr)
    from model_server.main import main as embedded_main

    return embedded_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
