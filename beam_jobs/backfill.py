"""Batch backfill: warm up or rebuild every user's interest state from behaviour logs.

    python -m beam_jobs.backfill --events data/demo/events.jsonl --model dien \
        --saved_models saved_models --redis_url redis://127.0.0.1:6390/0 [--version 1]
        [--cutoff_ts 2017-12-01T00:00:00] [--max_history 1000] [--runner FlinkRunner ...]

Pipeline: read event files (JSONL or Taobao CSV; malformed records to a dead-letter file)
-> group by user -> order by (time, event id) -> RunInference with the exported `tower`
(batched, `SignatureModelHandler` in a `KeyedModelHandler`) -> compare-and-set writes under
the model version with events_applied and the watermark of the last event folded in.
It also fills the Architecture A behaviour lists and writes the version's cold-start state
(the tower on an empty history). Unknown flags are Beam PipelineOptions.

From Python (the roll-out does this): ``run_backfill(BackfillOptions(model=..., events=[...],
store=StoreConfig(...)))``; the pipeline itself is the composite `BackfillStates`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam

from beam_jobs import common, metrics
from uic.store import DEFAULT_BEHAVIOUR_CAP, StoreConfig

_LOG = logging.getLogger("beam_jobs.backfill")
ACTIVATE = ("auto", "yes", "no")


@dataclasses.dataclass(frozen=True)
class BackfillOptions:
    """One backfill run.

    Args:
      model: sequence model (`uic.contract.SEQUENCE_MODELS`).
      events: event files or globs (events JSONL or Taobao CSV, local or a Beam file system).
      store: the interest store to write.
      saved_models: export root; version: export version (None: the newest).
      cutoff_ms: fold only events with event_time_ms <= this (point-in-time rebuild).
      max_history: fold only each user's last N events.
      batch_size: users per tower call.
      behaviour_cap, with_behaviours: Architecture A behaviour lists (the log a stream job
        running beside the backfill is merged through).
      max_attempts: compare-and-set attempts per user before the bundle fails (retried).
      dead_letter: JSON-lines file for malformed records (None:
        dead_letter/backfill-<model>-v<version>.jsonl).
      activate: set the active-version pointer afterwards: "auto" (only if none is set),
        "yes" or "no".
      beam_args: Beam pipeline flags (``--runner=FlinkRunner`` ...).
    """

    model: str
    events: Sequence[str]
    store: StoreConfig = StoreConfig()
    saved_models: str = "saved_models"
    version: int | None = None
    cutoff_ms: int | None = None
    max_history: int | None = None
    batch_size: int = 64
    behaviour_cap: int = DEFAULT_BEHAVIOUR_CAP
    with_behaviours: bool = True
    max_attempts: int = 8
    dead_letter: str | None = None
    activate: str = "auto"
    beam_args: Sequence[str] = ()


@dataclasses.dataclass
class BackfillResult:
    model: str
    version: int
    totals: dict[str, int]
    seconds: float
    dead_letter_path: str
    activated: bool


class BackfillStates(beam.PTransform):
    """PBegin -> every user's state of (model, version) written, plus the cold-start state,
    the behaviour lists and the dead-letter file. `options` must be resolved: `version` set,
    `events` expanded to file paths, `dead_letter` set (`run_backfill` does this)."""

    def __init__(self, options: BackfillOptions):
        super().__init__()
        if options.version is None or options.dead_letter is None:
            raise ValueError("BackfillStates needs resolved options (version, dead_letter)")
        self.options = options

    def expand(self, pbegin):
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        from beam_jobs import transforms as t
        from beam_jobs.model_handler import SignatureModelHandler, tower_example

        opt = self.options
        read = pbegin | "Read" >> t.ReadEventFiles(opt.events, opt.cutoff_ms)
        histories = read.events | "Histories" >> t.BuildHistories(
            opt.max_history, opt.behaviour_cap, opt.with_behaviours)
        cold = pbegin | "ColdStart" >> beam.Create([(t.COLD_START_KEY, tower_example([], []))])
        handler = KeyedModelHandler(SignatureModelHandler(
            opt.saved_models, opt.model, "tower", opt.version, max_batch_size=opt.batch_size))
        states = ((histories, cold) | "All" >> beam.Flatten()
                  | "Tower" >> RunInference(handler))
        written = states | "Write" >> t.WriteStates(opt)
        read[t.DEAD] | "DeadLetter" >> t.WriteDeadLetters(opt.dead_letter)
        return written


def _resolve(options: BackfillOptions) -> BackfillOptions:
    """Check the options and fill in the version, the file list and the dead-letter path,
    so that every mistake fails here, before a pipeline starts."""
    from uic import contract

    if options.model not in contract.SEQUENCE_MODELS:
        raise common.JobError(f"model must be one of {list(contract.SEQUENCE_MODELS)}, got "
                              f"{options.model!r}")
    if options.max_history is not None and options.max_history < 1:
        raise common.JobError(f"--max_history must be >= 1, got {options.max_history}")
    if options.batch_size < 1:
        raise common.JobError(f"--batch_size must be >= 1, got {options.batch_size}")
    if options.activate not in ACTIVATE:
        raise common.JobError(f"activate must be one of {ACTIVATE}, got {options.activate!r}")
    version = common.check_export(options.saved_models, options.model, options.version,
                                  ["tower"])
    dead = options.dead_letter or f"dead_letter/backfill-{options.model}-v{version}.jsonl"
    if "://" not in dead:
        Path(dead).parent.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(options, version=version, dead_letter=dead,
                               events=common.expand_inputs(options.events))


def run_backfill(options: BackfillOptions) -> BackfillResult:
    """Run one backfill to completion; raises `common.JobError` on bad options."""
    opt = _resolve(options)
    store = common.open_store(opt.store)
    pipeline_options = common.pipeline_options(opt.beam_args, streaming=False)
    _LOG.info("backfill %s v%d from %d file(s)%s", opt.model, opt.version, len(opt.events),
              f", cutoff {opt.cutoff_ms}" if opt.cutoff_ms is not None else "")
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner=common.make_runner(pipeline_options),
                             options=pipeline_options)
    pipeline | "Backfill" >> BackfillStates(opt)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    totals = dict.fromkeys(("users", "events", "rejected", "duplicates", "after_cutoff",
                            "states_written", "states_not_newer", "states_merged",
                            "cas_conflicts"), 0)
    totals.update(metrics.totals(result, metrics.BACKFILL))

    activated = False
    if opt.activate == "yes" or (opt.activate == "auto"
                                 and store.get_active_version(opt.model) is None):
        store.set_active_version(opt.model, opt.version)
        activated = True
    return BackfillResult(opt.model, opt.version, totals, seconds, opt.dead_letter, activated)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # '--redis_password X' must not be taken for --redis_password_env
        prog="python -m beam_jobs.backfill",
        description="Beam batch job: compute every user's interest state from behaviour logs "
                    "with the exported tower and write it to the interest store. Flags not "
                    "listed here are passed to Beam (e.g. --runner=FlinkRunner).",
    )
    common.add_common_args(parser)
    parser.add_argument("--events", nargs="+", required=True, metavar="FILE_OR_GLOB",
                        help="behaviour event files: events JSONL or Taobao CSV (*.csv)")
    parser.add_argument("--cutoff_ts", default=None,
                        help="only fold events with event_time_ms <= this (epoch ms or ISO "
                             "time): the state as of that time (point-in-time rebuild)")
    parser.add_argument("--max_history", type=int, default=None,
                        help="fold only each user's last N events (state and events_applied "
                             "then reflect only those)")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="users per tower call (RunInference batch, default: %(default)s)")
    parser.add_argument("--dead_letter", default=None,
                        help="JSON-lines file for malformed records "
                             "(default: dead_letter/backfill-<model>-v<version>.jsonl)")
    parser.add_argument("--no_behaviours", action="store_true",
                        help="do not fill the Architecture A behaviour lists")
    parser.add_argument("--activate", choices=ACTIVATE, default="auto",
                        help="set the model's active-version pointer to this version after a "
                             "successful run: auto = only if none is set (default: auto)")
    return parser


def run(argv: Sequence[str] | None = None) -> BackfillResult:
    """The command line: parse arguments into `BackfillOptions` and run it."""
    args, beam_args = common.parse_job_args(build_parser(), argv)
    common.setup_logging(args.verbose)
    return run_backfill(BackfillOptions(
        model=args.model, events=args.events, store=common.store_config(args),
        saved_models=args.saved_models, version=args.version,
        cutoff_ms=common.parse_cutoff(args.cutoff_ts), max_history=args.max_history,
        batch_size=args.batch_size, behaviour_cap=args.behaviour_cap,
        with_behaviours=not args.no_behaviours, dead_letter=args.dead_letter,
        activate=args.activate, beam_args=tuple(beam_args)))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        res = run(argv)
    except common.JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    users = res.totals.get("users", 0)
    events = res.totals.get("events", 0)
    common.print_summary(
        f"backfill {res.model} v{res.version} done in {res.seconds:.1f} s", res.totals,
        {"users/s": f"{users / res.seconds:,.0f}", "events/s": f"{events / res.seconds:,.0f}",
         "dead letters": res.dead_letter_path,
         "active version": f"{res.version} (set now)" if res.activated else "unchanged"},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
