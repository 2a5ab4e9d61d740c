"""The backfill and the stream job on Beam's portable path (a job service with the SDK
workers in a separate worker-pool process, as Flink, Spark and Dataflow run them) and on the
direct runner with 4 worker processes: the states they write equal those of the in-process
run. The Redis server has a password, which reaches the workers only through the
environment variable named by --redis_password_env, never through the pipeline options."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import threading
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc
from google.protobuf import json_format

from beam_jobs import backfill, stream
from beam_jobs.produce import produce
from devkit.beam_services import PortableBeam
from devkit.redis_server import EmbeddedRedis
from uic.store import StoreConfig

from .conftest import make_events, write_jsonl

SECRET = "portable-pw-5821"
PASSWORD_VAR = "UIC_PORTABLE_TEST_REDIS_PASSWORD"
MODEL = "dien"
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]
SDK_WORKER = "apache_beam.runners.worker.sdk_worker"  # in every SDK worker's command line


@dataclasses.dataclass(frozen=True)
class Setup:
    url: str  # without the password
    exports: Path
    events_path: Path
    payloads: list[str]  # every event in (time, id) order, for the stream
    cutoff_ms: int  # the backfill folds the events up to here, the stream job the rest
    users: list[int]
    work: Path


@pytest.fixture(scope="module")
def setup(tiny_exports, tmp_path_factory):
    events = make_events(seed=5, n=80, users=8)
    ordered = sorted(events, key=lambda e: e.sort_key)
    work = tmp_path_factory.mktemp("portable")
    with pytest.MonkeyPatch.context() as env, \
            EmbeddedRedis(password=SECRET, ephemeral=True) as server:
        env.setenv(PASSWORD_VAR, SECRET)  # inherited by the worker processes
        yield Setup(url=f"redis://127.0.0.1:{server.port}/0", exports=tiny_exports,
                    events_path=write_jsonl(work / "events.jsonl", events),
                    payloads=[e.to_json() for e in ordered],
                    cutoff_ms=ordered[len(ordered) // 2].event_time_ms,
                    users=sorted({e.user_id for e in events}), work=work)


@pytest.fixture(scope="module")
def services(setup):
    """The job service and the worker pool, whose working directory is not the repository:
    the workers import beam_jobs and uic from the installed package."""
    cwd = setup.work / "workers"
    cwd.mkdir()
    with PortableBeam(cwd=cwd, log_dir=setup.work / "logs") as started:
        yield started


def _store_args(setup: Setup, namespace: str) -> list[str]:
    return ["--model", MODEL, "--version", "1", "--saved_models", str(setup.exports),
            "--redis_url", setup.url, "--redis_password_env", PASSWORD_VAR,
            "--namespace", namespace]


def run_backfill(setup: Setup, namespace: str, beam_args: list[str]) -> dict[str, int]:
    result = backfill.run([*_store_args(setup, namespace), "--events", str(setup.events_path),
                           "--cutoff_ts", str(setup.cutoff_ms),
                           "--dead_letter", str(setup.work / f"dead-{namespace}.jsonl"),
                           *beam_args])
    return result.totals


def run_stream(setup: Setup, namespace: str, beam_args: list[str]) -> dict[str, int]:
    """Every event into a stream of the namespace's own, then the stream job until idle."""
    name = f"events:{namespace}"
    produce(_config(setup, namespace).connect(), name, setup.payloads, rate=0, progress=False)
    return stream.run([*_store_args(setup, namespace), "--stream", name,
                       "--max_idle_seconds", "1", "--coalesce_ms", "5", "--batch_size", "20",
                       *beam_args])


def _config(setup: Setup, namespace: str) -> StoreConfig:
    return StoreConfig(url=setup.url, password_env=PASSWORD_VAR, namespace=namespace)


def read_states(setup: Setup, namespace: str) -> dict:
    stored = _config(setup, namespace).connect().read_states(MODEL, 1, setup.users)
    return dict(zip(setup.users, stored, strict=True))


@dataclasses.dataclass
class RunResult:
    backfill_totals: dict[str, int]
    backfill_states: dict
    stream_totals: dict[str, int]
    stream_states: dict


@pytest.fixture(scope="module")
def in_process(setup) -> RunResult:
    """The reference: the backfill, then the stream job, on the in-process runner."""
    totals = run_backfill(setup, "inproc", [])
    states = read_states(setup, "inproc")
    stream_totals = run_stream(setup, "inproc", [])
    return RunResult(totals, states, stream_totals, read_states(setup, "inproc"))


class SdkWorkers:
    """The SDK worker processes started under `root_pid` while the `with` block runs."""

    def __init__(self, root_pid: int):
        self.root = psutil.Process(root_pid)
        self.pids: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            for child in self.root.children(recursive=True):
                try:
                    if any(SDK_WORKER in part for part in child.cmdline()):
                        self.pids.add(child.pid)
                except psutil.Error:  # exited meanwhile
                    continue

    def __enter__(self) -> SdkWorkers:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(5)


def assert_same_states(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for user, expected in want.items():
        actual = got[user]
        assert expected is not None and actual is not None, user
        assert actual.events_applied == expected.events_applied, user
        assert actual.watermark == expected.watermark, user
        np.testing.assert_allclose(actual.state, expected.state, atol=1e-5, rtol=0,
                                   err_msg=f"user {user}")


def _check_run(setup, namespace, beam_args, in_process, worker_root, min_workers):
    with SdkWorkers(worker_root) as workers:
        totals = run_backfill(setup, namespace, beam_args)
    assert len(workers.pids) >= min_workers, "the SDK workers did not run in their own processes"
    assert_same_states(read_states(setup, namespace), in_process.backfill_states)
    # the runner returns the counters (without them the backfill reports 0)
    for name in ("users", "events", "after_cutoff", "states_written"):
        assert totals[name] == in_process.backfill_totals[name], name

    with SdkWorkers(worker_root) as workers:
        totals = run_stream(setup, namespace, beam_args)
    assert len(workers.pids) >= min_workers
    assert_same_states(read_states(setup, namespace), in_process.stream_states)
    # each event after the cutoff is applied once, whichever worker reads it
    assert totals["applied"] == in_process.stream_totals["applied"] > 0
    assert _config(setup, namespace).connect().pending_count(f"events:{namespace}",
                                                             "uic-stream") == 0


def test_portable_job_service_and_worker_pool(setup, services, in_process):
    _check_run(setup, "portable", services.pipeline_args(), in_process,
               services.worker_pool.pid, min_workers=1)

    # The password went by the environment variable, not in the options the job service
    # holds (and hands to every worker), nor into the services' logs.
    with grpc.insecure_channel(services.job_endpoint) as channel:
        jobs = beam_job_api_pb2_grpc.JobServiceStub(channel).GetJobs(
            beam_job_api_pb2.GetJobsRequest()).job_info
    assert len(jobs) == 2  # the backfill and the stream job
    for job in jobs:
        options = json_format.MessageToJson(job.pipeline_options)
        assert services.job_endpoint in options  # these are the options it ran with
        assert SECRET not in options
    for log in (services.job_service.log_path, services.worker_pool.log_path):
        assert SECRET not in log.read_text(errors="replace")


def test_direct_runner_with_4_worker_processes(setup, in_process):
    _check_run(setup, "multi", MULTI_PROCESSING, in_process, os.getpid(), min_workers=4)


def test_services_listen_on_loopback_only(services):
    for child in (services.job_service, services.worker_pool):
        listening = [c.laddr.ip for c in psutil.Process(child.pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening, child.name
        assert all(_loopback(ip) for ip in listening), (child.name, listening)


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback
