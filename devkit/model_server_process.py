"""Run the embedded server as a child process (tests, demo, benchmarks).

`ModelServerProcess(args)` starts `python -m model_server` with free ports unless the args
name them, waits until every configured model reports a version AVAILABLE over gRPC, and
stops the process (SIGTERM, then SIGKILL) on exit. Its log goes to a file whose tail is
shown when startup fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port the OS just handed out on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flag_value(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


class ModelServerProcess:
    """The embedded model server in a subprocess; a context manager."""

    def __init__(self, args: Sequence[str], *, env: dict | None = None,
                 log_path: str | os.PathLike | None = None, python: str | None = None):
        args = list(args)
        if _flag_value(args, "port") is None:
            args.append(f"--port={free_port()}")
        if _flag_value(args, "rest_api_port") is None:
            args.append(f"--rest_api_port={free_port()}")
        self.args = args
        self.grpc_port = int(_flag_value(args, "port"))
        self.rest_port = int(_flag_value(args, "rest_api_port")) or None
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.rest_url = f"http://127.0.0.1:{self.rest_port}" if self.rest_port else None
        # make `-m model_server` importable from any working directory
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH", "")
        self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                        PYTHONPATH=root + (os.pathsep + path if path else ""), **(env or {}))
        self.python = python or sys.executable
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="model_server_", suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None

    def model_names(self) -> list[str]:
        config_file = _flag_value(self.args, "model_config_file")
        if config_file:
            from model_server.config import read_models_config

            config = read_models_config(config_file)
            return [c.name for c in config.model_config_list.config]
        return [_flag_value(self.args, "model_name") or "default"]

    def start(self, timeout: float = 120) -> ModelServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen([self.python, "-m", "model_server", *self.args],
                                     stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        deadline = time.monotonic() + timeout
        names = self.model_names()
        channel = grpc.insecure_channel(self.grpc_target)
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            pending = list(names)
            while pending:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"model server exited with code {self.proc.returncode} "
                                       f"during startup:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"model server not ready after {timeout:.0f} s (waiting "
                                       f"for {pending}):\n{self.log_tail()}")
                name = pending[0]
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = name
                try:
                    response = stub.GetModelStatus(request, timeout=2)
                    if any(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
                           for s in response.model_version_status):
                        pending.pop(0)
                        continue
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        finally:
            channel.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ModelServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
