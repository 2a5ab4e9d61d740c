"""Version roll-out: backfill version v+1 while v keeps serving, then flip the active pointer.

    python -m beam_jobs.rollout --model dien --events data/demo/events.jsonl \
        --saved_models saved_models --redis_url redis://127.0.0.1:6390/0 \
        [--version 2] [--stream uic:events] [--retention_seconds 86400]
    python -m beam_jobs.rollout --model dien --redis_url ... --cleanup

Steps: (1) backfill the new version's states from the logs with its own tower (keys carry
the version, so version v's states and the serving path are untouched); (2) optionally
catch up from the Redis Stream (`--stream`): replay its retained entries onto the new
version with its `step` (the watermark rule skips what the logs already covered); (3) check
the backfill is complete (every user written or already newer, cold-start state present);
(4) only then flip the active pointer, which the stream job and the client follow; (5)
retire the old version: `--retention_seconds 0` deletes its states now, otherwise the store
records its deadline (`InterestStore.retire_version`) and a later `--cleanup` run (cron)
deletes every retired version whose deadline has passed. Until then the old states stay
available for an instant roll-back (flip the pointer back).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from beam_jobs import common
from beam_jobs.backfill import BackfillOptions, run_backfill
from uic.store import redact_url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.rollout",
        description="Backfill a new model version's interest states while the current version "
                    "keeps serving, then flip the active-version pointer. Flags not listed "
                    "here are passed to the backfill's Beam pipeline.")
    common.add_common_args(parser)
    parser.add_argument("--events", nargs="+", metavar="FILE_OR_GLOB",
                        help="behaviour logs to backfill from (required unless --cleanup)")
    parser.add_argument("--max_history", type=int, default=None,
                        help="as in the backfill: fold only each user's last N events")
    parser.add_argument("--stream", default=None,
                        help="also catch up from this Redis Stream's retained entries before "
                             "the flip (events the logs do not hold yet)")
    parser.add_argument("--retention_seconds", type=int, default=7 * 24 * 3600,
                        help="keep the old version's states this long after the flip; 0 "
                             "deletes them at once (default: 7 days)")
    parser.add_argument("--cleanup", action="store_true",
                        help="only delete retired versions whose retention has passed")
    parser.add_argument("--force", action="store_true",
                        help="rebuild and flip even if the version is already active")
    return parser


def cleanup(store, model: str, now_ms: int | None = None) -> list[int]:
    """Delete the states of retired versions whose retention has passed; returns them."""
    deleted = store.delete_retired_versions(model, now_ms)
    for version, keys in deleted.items():
        print(f"deleted {keys:,} keys of {model} v{version} (retention passed)")
    return list(deleted)


def catch_up(store, options: BackfillOptions, stream: str, chunk: int = 2000
             ) -> dict[str, int]:
    """Replay the stream's retained entries onto `options.version` with its `step`
    (idempotent by the watermark: what the logs already covered counts as duplicates)."""
    from beam_jobs.redis_streams import to_record
    from beam_jobs.updater import StateUpdater
    from uic.events import Event, InvalidEvent

    updater = StateUpdater(store, options.saved_models, options.model, options.version,
                           behaviour_cap=options.behaviour_cap,
                           with_behaviours=options.with_behaviours)
    totals = {"entries": 0, "applied": 0, "duplicates": 0, "late_or_invalid": 0}
    for entries in store.replay_stream(stream, chunk=chunk):
        events = []
        for _, payload in map(to_record, entries):
            try:
                events.append(Event.from_json(payload or b""))
            except InvalidEvent:
                totals["late_or_invalid"] += 1
        outcome = updater.apply(events)
        for _ in range(8):  # a live stream job may win some races: redo what it won
            if not outcome.unapplied:
                break
            retried = updater.apply(outcome.unapplied)
            outcome.applied += retried.applied
            outcome.duplicates += retried.duplicates
            outcome.refused += retried.refused
            outcome.unapplied = retried.unapplied
        if outcome.unapplied:
            raise common.JobError(f"{len(outcome.unapplied)} events kept losing compare-and-set "
                                  "races during the catch-up; run the roll-out again")
        totals["entries"] += len(entries)
        totals["applied"] += outcome.applied
        totals["duplicates"] += outcome.duplicates
        totals["late_or_invalid"] += len(outcome.refused)
    return totals


def run(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    common.setup_logging(args.verbose)
    config = common.store_config(args)
    store = common.open_store(config)
    if args.cleanup:
        deleted = cleanup(store, args.model)
        print(f"cleanup: {len(deleted)} retired version(s) deleted {deleted}")
        return 0
    if not args.events:
        raise common.JobError("--events is required (the logs to backfill the new version "
                              "from), unless you run --cleanup")
    if args.retention_seconds < 0:
        raise common.JobError(f"--retention_seconds must be >= 0, got {args.retention_seconds}")
    new = common.check_export(args.saved_models, args.model, args.version, ["tower", "step"])
    old = store.get_active_version(args.model)
    if old == new and not args.force:
        print(f"{args.model} v{new} is already active; nothing to do (--force rebuilds it)")
        return 0
    print(f"roll-out {args.model}: v{old} serving, backfilling v{new} ...", flush=True)

    options = BackfillOptions(
        model=args.model, events=args.events, store=config, saved_models=args.saved_models,
        version=new, max_history=args.max_history, behaviour_cap=args.behaviour_cap,
        activate="no", beam_args=tuple(beam_args))
    result = run_backfill(options)
    totals = result.totals
    users = totals.get("users", 0)
    done = totals.get("states_written", 0) + totals.get("states_not_newer", 0)
    if done != users or store.read_cold_start(args.model, new) is None:
        raise common.JobError(
            f"backfill of v{new} is incomplete ({done} of {users} users written, cold start "
            f"{'missing' if store.read_cold_start(args.model, new) is None else 'present'}); "
            f"the active version stays v{old}. Re-run the roll-out.")
    print(f"backfilled v{new}: {users:,} users, {totals.get('events', 0):,} events in "
          f"{result.seconds:.1f} s")
    if args.stream:
        caught = catch_up(store, options, args.stream)
        print(f"caught up from {args.stream}: {caught}")

    if store.get_active_version(args.model) != old:
        raise common.JobError(
            f"the active version of {args.model} changed during the roll-out (was v{old}, now "
            f"v{store.get_active_version(args.model)}); not flipping. Check who else deploys.")
    store.set_active_version(args.model, new)
    print(f"active version of {args.model}: v{old} -> v{new}")
    if old is not None and old != new:
        if args.retention_seconds == 0:
            print(f"deleted {store.delete_version(args.model, old):,} keys of v{old}")
        else:
            deadline = int(time.time() * 1000) + args.retention_seconds * 1000
            store.retire_version(args.model, old, deadline)
            print(f"v{old} states kept for {args.retention_seconds} s (roll back: set the "
                  f"pointer to {old}); delete them later with `python -m beam_jobs.rollout "
                  f"--model {args.model} --redis_url {redact_url(args.redis_url)} --cleanup`")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except common.JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
