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
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from beam_jobs import common

_LOG = logging.getLogger("beam_jobs.backfill")


@dataclasses.dataclass
class BackfillResult:
    model: str
    version: int
    totals: dict[str, int]
    seconds: float
    dead_letter_path: str
    activated: bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser.add_argument("--activate", choices=["auto", "yes", "no"], default="auto",
                        help="set the model's active-version pointer to this version after a "
                             "successful run: auto = only if none is set (default: auto)")
    return parser


def build_pipeline(pipeline, *, paths: Sequence[str], model: str, version: int,
                   saved_models: str, store_config: dict, cutoff_ms: int | None,
                   max_history: int | None, batch_size: int, behaviour_cap: int,
                   with_behaviours: bool, dead_letter_path: str) -> None:
    """Add the backfill transforms to `pipeline` (shared by the CLI, roll-out and tests)."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    from beam_jobs import transforms as t
    from beam_jobs.model_handler import SignatureModelHandler, tower_example

    read = pipeline | "Read" >> t.ReadEventFiles(paths, cutoff_ms)
    built = read.events | "Histories" >> t.BuildHistories(max_history, behaviour_cap,
                                                          with_behaviours)
    cold = pipeline | "ColdStart" >> beam.Create([(t.COLD_START_KEY, tower_example([], []))])
    handler = KeyedModelHandler(SignatureModelHandler(saved_models, model, "tower", version,
                                                      max_batch_size=batch_size))
    states = ((built.histories, cold) | "All" >> beam.Flatten()
              | "Tower" >> RunInference(handler))
    states | "Write" >> t.WriteStates(store_config, model, version)
    if with_behaviours:
        built[t.BEHAVIOURS] | "Behaviours" >> t.AppendBehaviours(store_config, behaviour_cap)
    read[t.DEAD] | "DeadLetter" >> t.WriteDeadLetters(dead_letter_path)


def run(argv: Sequence[str] | None = None) -> BackfillResult:
    """Parse arguments, run the pipeline to completion, return its counters."""
    import apache_beam as beam

    args, beam_args = build_parser().parse_known_args(argv)
    common.setup_logging(args.verbose)
    if args.max_history is not None and args.max_history < 1:
        raise common.JobError(f"--max_history must be >= 1, got {args.max_history}")
    if args.batch_size < 1:
        raise common.JobError(f"--batch_size must be >= 1, got {args.batch_size}")
    version = common.check_export(args.saved_models, args.model, args.version, ["tower"])
    cutoff_ms = common.parse_cutoff(args.cutoff_ts)
    paths = common.expand_inputs(args.events)
    dead_path = args.dead_letter or f"dead_letter/backfill-{args.model}-v{version}.jsonl"
    if "://" not in dead_path:
        Path(dead_path).parent.mkdir(parents=True, exist_ok=True)
    store_config = common.store_config(args)
    store = common.open_store(store_config)

    options = common.pipeline_options(beam_args, streaming=False)
    _LOG.info("backfill %s v%d from %d file(s)%s", args.model, version, len(paths),
              f", cutoff {cutoff_ms}" if cutoff_ms is not None else "")
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner=common.make_runner(options), options=options)
    build_pipeline(pipeline, paths=paths, model=args.model, version=version,
                   saved_models=args.saved_models, store_config=store_config,
                   cutoff_ms=cutoff_ms, max_history=args.max_history,
                   batch_size=args.batch_size, behaviour_cap=args.behaviour_cap,
                   with_behaviours=not args.no_behaviours, dead_letter_path=dead_path)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    totals = dict.fromkeys(("users", "events", "rejected", "duplicates", "after_cutoff",
                            "states_written", "states_not_newer"), 0)
    totals.update(common.metric_totals(result, "backfill"))

    activated = False
    if args.activate == "yes" or (args.activate == "auto"
                                  and store.get_active_version(args.model) is None):
        store.set_active_version(args.model, version)
        activated = True
    return BackfillResult(args.model, version, totals, seconds, dead_path, activated)


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
