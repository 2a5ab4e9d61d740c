"""The model server (`python -m model_server`) as a child process, for tests, the demo and
the benchmarks.

`ModelServerProcess(args)` picks free loopback ports unless the args name them, starts the
server as a `devkit.processes.ChildProcess`, and is ready once every configured model
reports a version AVAILABLE over gRPC. It stops with SIGTERM (the server drains and exits),
then SIGKILL. Its log goes to a file whose tail is quoted when start-up fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from devkit.ports import HOST, free_port
from devkit.processes import ChildProcess

REPO_ROOT = Path(__file__).resolve().parents[1]


def _flag_value(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


class ModelServerProcess:
    """The model server in a child process; a context manager (start on enter, stop on exit).

    `args` are the server's flags (those of `tensorflow_model_server`); `--port` and
    `--rest_api_port` are added with free ports when missing (`--rest_api_port=0` turns
    REST off). `env` is added to this process's environment.
    """

    def __init__(self, args: Sequence[str], *, env: dict | None = None,
                 log_path: str | os.PathLike | None = None, python: str | None = None):
        args = list(args)
        if _flag_value(args, "port") is None:
            args.append(f"--port={free_port()}")
        if _flag_value(args, "rest_api_port") is None:
            args.append(f"--rest_api_port={free_port()}")
        if _flag_value(args, "xla_cpu_compilation_enabled") is None:
            # the project's exports are XLA-compiled; like TF Serving, the server refuses them
            # unless the flag is on
            args.append("--xla_cpu_compilation_enabled=true")
        self.args = args
        self.grpc_port = int(_flag_value(args, "port"))
        self.rest_port = int(_flag_value(args, "rest_api_port")) or None
        self.grpc_target = f"{HOST}:{self.grpc_port}"
        self.rest_url = f"http://{HOST}:{self.rest_port}" if self.rest_port else None
        # `-m model_server` must import from any working directory
        path = os.environ.get("PYTHONPATH", "")
        child_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                         PYTHONPATH=str(REPO_ROOT) + (os.pathsep + path if path else ""),
                         **(env or {}))
        self.process = ChildProcess([python or sys.executable, "-m", "model_server", *args],
                                    name=f"model server on port {self.grpc_port}",
                                    log_path=log_path, env=child_env)

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def model_names(self) -> list[str]:
        """The models the server was told to load (from its config file or --model_name)."""
        config_file = _flag_value(self.args, "model_config_file")
        if config_file:
            from model_server.config import read_models_config

            config = read_models_config(config_file)
            return [c.name for c in config.model_config_list.config]
        return [_flag_value(self.args, "model_name") or "default"]

    def start(self, timeout: float = 120) -> ModelServerProcess:
        """Start the server; return once every model has a version AVAILABLE."""
        import grpc

        names = self.model_names()
        pending = list(names)
        channel = grpc.insecure_channel(self.grpc_target)
        try:
            self.process.start(ready=lambda: self._drop_available(channel, pending),
                               waiting_for=lambda: f"models {pending} of {names} to be AVAILABLE",
                               timeout=timeout)
        finally:
            channel.close()
        return self

    @staticmethod
    def _drop_available(channel, pending: list[str]) -> bool:
        """Remove from `pending` the models that report a version AVAILABLE; True when none
        is left."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        for name in list(pending):
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = name
            try:
                response = stub.GetModelStatus(request, timeout=2)
            except grpc.RpcError:
                return False
            if not any(s.state == available for s in response.model_version_status):
                return False
            pending.remove(name)
        return True

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, up to `timeout` s to drain, then SIGKILL; returns the exit code."""
        return self.process.stop(timeout)

    def __enter__(self) -> ModelServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
