"""Pieces every job shares: CLI options for the store and model, version resolution,
runner selection, input globbing and the printed summary (the counters are in
`beam_jobs.metrics`).

Kept in one place so the backfill, the stream job and the roll-out parse `--model`,
`--version`, `--redis_url` ... the same way and fail with the same clear messages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from uic import contract
from uic.store import (
    DEFAULT_BEHAVIOUR_CAP,
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS_URL,
    InterestStore,
    StoreConfig,
    StoreError,
)


class JobError(Exception):
    """A problem with the job's inputs that the user must fix; the message says how."""


def add_store_args(parser: argparse.ArgumentParser) -> None:
    """Where the interest store is: one definition for every job and tool."""
    parser.add_argument("--redis_url", default=DEFAULT_REDIS_URL,
                        help="interest store (default: %(default)s)")
    parser.add_argument("--redis_password_env", default=None, metavar="VAR",
                        help="read the Redis password from this environment variable instead "
                             "of the URL (keeps it out of argv, logs and the pipeline that "
                             "Beam ships to workers; set it on every worker)")
    parser.add_argument("--redis_cluster", action="store_true",
                        help="the URL points at a Redis Cluster node (keys use hash tags)")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Model, version, export root and store options shared by the jobs."""
    parser.add_argument("--model", required=True, choices=contract.SEQUENCE_MODELS,
                        help="sequence model whose interest states to maintain")
    parser.add_argument("--version", type=int, default=None,
                        help="export version (default: backfill the newest export; the stream "
                             "job follows the store's active-version pointer)")
    parser.add_argument("--saved_models", default="saved_models",
                        help="export root holding <model>_<part>/<version>/ (default: %(default)s)")
    add_store_args(parser)
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="store key prefix; a separate one holds e.g. point-in-time "
                             "snapshots next to the live states (default: %(default)s)")
    parser.add_argument("--state_dtype", choices=["fp32", "fp16"], default="fp32",
                        help="how states are stored (default: %(default)s)")
    parser.add_argument("--behaviour_cap", type=int, default=DEFAULT_BEHAVIOUR_CAP,
                        help="behaviours kept per user for Architecture A (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def store_config(args: argparse.Namespace) -> StoreConfig:
    """The `uic.store.StoreConfig` the flags describe (picklable; workers connect from it)."""
    return StoreConfig(url=args.redis_url, cluster=bool(args.redis_cluster),
                       password_env=args.redis_password_env,
                       namespace=getattr(args, "namespace", DEFAULT_NAMESPACE),
                       dtype=getattr(args, "state_dtype", "fp32"))


def open_store(config: StoreConfig) -> InterestStore:
    """An InterestStore from a `StoreConfig` (connection checked now, clear error if not)."""
    try:
        return config.connect()
    except StoreError as err:
        raise JobError(str(err)) from None


def check_export(saved_models: str | os.PathLike, model: str, version: int | None,
                 parts: Sequence[str]) -> int:
    """Resolve `version` (None = newest export) and check every needed part exists."""
    root = Path(saved_models)
    if version is None:
        version = contract.latest_version(root, model, parts[0])
        if version is None:
            raise JobError(
                f"no {contract.serving_model_name(model, parts[0])} export under {root}: "
                "pass --saved_models pointing at the export root, or run `make export`"
            )
    for part in parts:
        path = contract.export_dir(root, model, part, version)
        if not (path / "saved_model.pb").is_file():
            raise JobError(f"{path} is not a SavedModel (no saved_model.pb): export version "
                           f"{version} of {model} first, or pick another --version")
    return int(version)


def parse_cutoff(text: str | None) -> int | None:
    """`--cutoff_ts`: epoch milliseconds, or an ISO-8601 time (UTC unless it says otherwise)."""
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
        if value < 0:
            raise JobError(f"--cutoff_ts must be >= 0 milliseconds, got {value}")
        return value
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise JobError(f"--cutoff_ts {text!r} is neither epoch milliseconds nor an ISO-8601 "
                       "time such as 2017-11-27T00:00:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Expand `--events` files/globs now, so a typo fails before any work starts."""
    from apache_beam.io.filesystems import FileSystems

    paths: list[str] = []
    for pattern in patterns:
        if "://" in pattern:  # gs://, s3:// ...: let Beam's file systems match them
            matches = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
        else:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else (
                [pattern] if os.path.isfile(pattern) else [])
        if not matches:
            raise JobError(f"--events {pattern!r} matched no files: generate the demo data "
                           "with `make data` or check the path")
        paths.extend(matches)
    return paths


def refuse_secret_flags(beam_args: Sequence[str]) -> None:
    """A password-like flag the job does not know would go to Beam's pipeline options,
    which every worker and runner UI sees: refuse it (without echoing its value)."""
    for arg in beam_args:
        flag = arg.split("=", 1)[0]
        if flag.startswith("-") and ("password" in flag.lower() or "secret" in flag.lower()):
            raise JobError(f"{flag} is not a flag of this job, and what it does not know goes to "
                           "Beam's pipeline options, which every worker and runner UI sees: "
                           "put the Redis password in an environment variable and pass "
                           "--redis_password_env VAR")


def parse_job_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """(our arguments, the rest for Beam), refusing secret-looking flags before the job
    touches anything (the stream job would otherwise first wait for Redis)."""
    args, beam_args = parser.parse_known_args(argv)
    refuse_secret_flags(beam_args)
    return args, beam_args


def pipeline_options(beam_args: Sequence[str], *, streaming: bool):
    """Beam PipelineOptions from the arguments our parser did not consume.

    Unknown flags go to Beam untouched, so one code path serves every runner
    (docs/runners.md):

    * none: Beam's Python engine in this process (`make_runner`);
    * ``--direct_running_mode=multi_processing --direct_num_workers=4``: the same engine with
      its SDK workers in 4 separate processes (``multi_threading``: 4 threads);
    * ``--runner=PortableRunner --job_endpoint=... --environment_type=EXTERNAL
      --environment_config=...``: a Beam job service (`devkit.beam_services` starts one here)
      with the workers in a worker pool;
    * ``--runner=FlinkRunner --flink_master=...``, ``--runner=DataflowRunner --project=...
      --region=... --temp_location=...``.

    Secrets never belong here: the options travel to the job service and every worker (and
    are shown in runners' UIs); the Redis password goes by `--redis_password_env`.
    """
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        SetupOptions,
        StandardOptions,
    )

    refuse_secret_flags(beam_args)
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    if streaming:
        standard.streaming = True
    # Workers on a distributed runner import beam_jobs and uic from the installed package.
    options.view_as(SetupOptions).save_main_session = False
    return options


def is_direct(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name in ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner")


def make_runner(options):
    """The runner to pass to beam.Pipeline.

    For the local default we pin Beam's Python direct runner engine (`FnApiRunner`, what
    `DirectRunner` uses for pipelines it can run in-process) instead of `DirectRunner`, whose
    streaming path first tries to download Prism from the internet and whose
    `BundleBasedDirectRunner` rejects splittable DoFns such as our Redis Stream reader.
    `FnApiRunner` reads ``--direct_running_mode`` and ``--direct_num_workers`` from the
    options when the pipeline runs (``multi_processing`` starts each worker as
    ``python -m apache_beam.runners.worker.sdk_worker_main`` with this interpreter, this
    environment and this working directory), so it needs nothing more here.
    """
    if is_direct(options):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    return None  # Beam builds the runner named by --runner


def print_summary(title: str, totals: dict[str, int], extra: dict[str, object] | None = None
                  ) -> None:
    width = max([len(k) for k in list(totals) + list(extra or {})] + [10])
    print(f"\n{title}")
    for key in sorted(totals):
        print(f"  {key:<{width}}  {totals[key]:>12,}")
    for key, value in (extra or {}).items():
        print(f"  {key:<{width}}  {value}")


def setup_logging(verbose: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("beam_jobs").setLevel(logging.DEBUG if verbose else logging.INFO)
