"""pytest plugin: the embedded TF Serving-compatible model server as a real subprocess.

`model_server_factory(models, extra_args=())` starts `python -m model_server` on free
loopback ports and returns the started `ModelServerProcess` (`.grpc_target`, `.rest_url`,
`.grpc_port`, `.rest_port`). `models` is `{name: base_path}` (a models.config is written for
it) or the path of an existing models.config. Servers live until the end of the requesting
test module; load failures are not retried (`--max_num_load_retries=0`) so a broken export
fails fast instead of waiting out TF Serving's 5 x 60 s retry schedule.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devkit.model_server_process import ModelServerProcess
from model_server.config import write_models_config


def start_model_server(models, extra_args=(), workdir: Path | None = None,
                       timeout: float = 120) -> ModelServerProcess:
    """Start a server for `models` ({name: base_path} or a config path); caller stops it."""
    args = list(extra_args)
    if isinstance(models, (str, os.PathLike)):
        config = Path(models)
    else:
        import tempfile

        folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="model_server_"))
        folder.mkdir(parents=True, exist_ok=True)
        config = write_models_config(folder / "models.config", models)
    if not any(a.startswith("--model_config_file=") for a in args):
        args.insert(0, f"--model_config_file={config}")
    if not any(a.startswith("--max_num_load_retries=") for a in args):
        args.append("--max_num_load_retries=0")
    if not any(a.startswith("--xla_cpu_compilation_enabled") for a in args):
        args.append("--xla_cpu_compilation_enabled=true")  # the exports are XLA-compiled
    return ModelServerProcess(args).start(timeout=timeout)


@pytest.fixture(scope="module")
def model_server_factory(tmp_path_factory):
    started: list[ModelServerProcess] = []

    def factory(models, extra_args=(), timeout: float = 120) -> ModelServerProcess:
        workdir = tmp_path_factory.mktemp("model_server")
        server = start_model_server(models, extra_args, workdir, timeout)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
