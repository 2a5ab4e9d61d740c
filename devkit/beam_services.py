"""Beam's portable job API on this machine: a job service and a pool of SDK workers in
separate processes, so the backfill and the stream job can run the way Flink, Spark and
Dataflow run them (docs/runners.md).

* the job service is Beam's own `apache_beam.runners.portability.local_job_service_main`
  (it takes the pipeline through the Job API, stages artifacts and runs it with Beam's
  FnApiRunner, which sends every bundle to the workers over the Fn API);
* the worker pool is Beam's `BeamFnExternalWorkerPoolServicer` (what
  `apache_beam.runners.worker.worker_pool_main` serves), bound to 127.0.0.1 here because
  Beam's module listens on every interface and starts a worker for whoever asks; each
  worker it starts is a new `python` process, found on PATH, so the pool runs with this
  interpreter's directory first on PATH (the workers import `beam_jobs` and `uic` from the
  same environment, where the project is installed).

Both are `devkit.processes.ChildProcess` children: own session, log file, ready when their
gRPC port answers. The workers inherit the pool's environment: that is how a Redis password
given by `--redis_password_env VAR` reaches them (set VAR where the pool starts).

Python::

    with PortableBeam() as beam_services:
        backfill.run([..., *beam_services.pipeline_args()])

Command line (the services in the foreground until Ctrl-C; prints the pipeline flags)::

    python -m devkit.beam_services run [--job_port N] [--worker_port M]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from devkit.ports import HOST, free_port
from devkit.processes import ChildProcess

JOB_SERVICE_HOST = "localhost"  # where Beam's job service binds (its own choice: loopback)


def grpc_ready(address: str, timeout_s: float = 0.5) -> bool:
    """True when a gRPC server answers at `address` (host:port)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
    return True


def worker_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the worker pool: `base` (default: this process's) with this
    interpreter's directory first on PATH, since Beam starts each worker as `python -c ...`."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]).rstrip(os.pathsep)
    return env


class PortableBeam:
    """A local Beam job service and an SDK worker pool (loopback), started and stopped
    together; a context manager.

    Args:
      job_port, worker_port: their ports (default: free ones).
      log_dir: where `job_service.log` and `worker_pool.log` go (default: a new temporary
        directory, kept after the stop so the logs can be read).
      env: the worker pool's environment, which every worker inherits (default: this
        process's); `python` resolves to this interpreter either way.
      cwd: the worker pool's and workers' working directory (default: this process's);
        relative paths in the job's options are resolved from it.
    """

    def __init__(self, *, job_port: int | None = None, worker_port: int | None = None,
                 log_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None):
        self.job_port = job_port or free_port()
        self.worker_port = worker_port or free_port()
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="beam_"))
        self.job_service = ChildProcess(
            [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
             "--port", str(self.job_port)],
            name="beam job service", log_path=self.log_dir / "job_service.log")
        self.worker_pool = ChildProcess(
            [sys.executable, "-m", "devkit.beam_services", "worker-pool",
             "--port", str(self.worker_port)],
            name="beam worker pool", log_path=self.log_dir / "worker_pool.log",
            env=worker_environment(env), cwd=cwd)

    @property
    def job_endpoint(self) -> str:
        return f"{JOB_SERVICE_HOST}:{self.job_port}"

    @property
    def worker_endpoint(self) -> str:
        return f"{HOST}:{self.worker_port}"

    def pipeline_args(self) -> list[str]:
        """The Beam flags that send a pipeline to this job service and its workers to this
        pool."""
        return ["--runner=PortableRunner", f"--job_endpoint={self.job_endpoint}",
                "--environment_type=EXTERNAL", f"--environment_config={self.worker_endpoint}"]

    def start(self, timeout: float = 60.0) -> PortableBeam:
        self.worker_pool.start(lambda: grpc_ready(self.worker_endpoint),
                               waiting_for=f"its gRPC port {self.worker_endpoint}",
                               timeout=timeout)
        try:
            self.job_service.start(lambda: grpc_ready(self.job_endpoint),
                                   waiting_for=f"its gRPC port {self.job_endpoint}",
                                   timeout=timeout)
        except BaseException:
            self.worker_pool.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the job service, then the pool (its process group holds the workers)."""
        self.job_service.stop()
        self.worker_pool.stop()

    def __enter__(self) -> PortableBeam:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_worker_pool(port: int) -> None:
    """Beam's external worker pool (each worker a separate process), on 127.0.0.1 only."""
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
    from apache_beam.utils import thread_pool_executor

    server = grpc.server(thread_pool_executor.shared_unbounded_instance())
    servicer = BeamFnExternalWorkerPoolServicer(use_process=True)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(servicer, server)
    if not server.add_insecure_port(f"{HOST}:{port}"):
        raise SystemExit(f"cannot listen on {HOST}:{port}: is the port in use? Pick another "
                         "with --port")
    server.start()
    print(f"worker pool on {HOST}:{port} (workers: {sys.executable})", flush=True)
    server.wait_for_termination()  # its workers share its process group: stopped with it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.beam_services",
        description="Beam's portable job API on this machine: a local job service and a pool "
                    "of SDK worker processes, both on loopback (docs/runners.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the job service and the worker pool, print the "
                                     "pipeline flags, run until Ctrl-C")
    run.add_argument("--job_port", type=int, default=None, help="job service port (default: free)")
    run.add_argument("--worker_port", type=int, default=None,
                     help="worker pool port (default: free)")
    run.add_argument("--log_dir", default=None,
                     help="where the two logs go (default: a new temporary directory)")
    pool = sub.add_parser("worker-pool", help="serve only the SDK worker pool on 127.0.0.1")
    pool.add_argument("--port", type=int, required=True, help="its port")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker-pool":
        serve_worker_pool(args.port)
        return 0
    services = PortableBeam(job_port=args.job_port, worker_port=args.worker_port,
                            log_dir=args.log_dir).start()
    try:
        print("Beam job service and worker pool running; logs in", services.log_dir)
        print("pipeline flags:", " ".join(services.pipeline_args()), flush=True)
        while services.job_service.running and services.worker_pool.running:
            time.sleep(1)
        print("a service exited; logs in", services.log_dir, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
