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
retire the old version: `--retention_seconds 0` deletes its states now, otherwise the
deadline is recorded in `<namespace>:m:<model>:retire` (a hash version -> epoch ms) and a
later `--cleanup` run (cron) deletes every retired version whose deadline has passed. Until
then the old states stay available for an instant roll-back (flip the pointer back).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from beam_jobs import backfill, common


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
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    key = store.retire_key(model)
    active = store.get_active_version(model)
    deleted = []
    for raw_version, raw_deadline in store.client.hgetall(key).items():
        version, deadline = int(raw_version), int(raw_deadline)
        if version == active:  # rolled back to it meanwhile: keep
            store.client.hdel(key, raw_version)
            continue
        if deadline <= now_ms:
            removed = store.delete_version(model, version)
            store.client.hdel(key, raw_version)
            deleted.append(version)
            print(f"deleted {removed:,} keys of {model} v{version} (retention passed)")
    return deleted


def catch_up(store, args: argparse.Namespace, version: int, chunk: int = 2000) -> dict[str, int]:
    """Replay the stream's retained entries onto `version` (idempotent by the watermark)."""
    from beam_jobs.redis_source import to_records
    from beam_jobs.updater import StateUpdater
    from uic.events import Event, InvalidEvent

    updater = StateUpdater(store, args.saved_models, args.model, version,
                           behaviour_cap=args.behaviour_cap)
    totals = {"entries": 0, "applied": 0, "duplicates": 0, "late_or_invalid": 0}
    start = "-"
    while True:
        entries = store.client.xrange(args.stream, min=start, count=chunk)
        records = to_records(entries)
        if not records:
            return totals
        events = []
        for _, payload in records:
            try:
                events.append(Event.from_json(payload or b""))
            except InvalidEvent:
                totals["late_or_invalid"] += 1
        outcome = updater.apply(events)
        totals["entries"] += len(records)
        totals["applied"] += outcome.applied
        totals["duplicates"] += outcome.duplicates
        totals["late_or_invalid"] += len(outcome.late)
        start = "(" + records[-1][0]


def run(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    common.setup_logging(args.verbose)
    store = common.open_store(common.store_config(args))
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

    argv_backfill = ["--model", args.model, "--version", str(new),
                     "--saved_models", str(args.saved_models), "--redis_url", args.redis_url,
                     "--namespace", args.namespace, "--state_dtype", args.state_dtype,
                     "--behaviour_cap", str(args.behaviour_cap), "--activate", "no",
                     "--events", *args.events]
    if args.redis_cluster:
        argv_backfill.append("--redis_cluster")
    if args.max_history is not None:
        argv_backfill += ["--max_history", str(args.max_history)]
    result = backfill.run(argv_backfill + list(beam_args))
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
        caught = catch_up(store, args, new)
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
            store.client.hset(store.retire_key(args.model), str(old), str(deadline))
            print(f"v{old} states kept for {args.retention_seconds} s (roll back: set the "
                  f"pointer to {old}); delete them later with `python -m beam_jobs.rollout "
                  f"--model {args.model} --redis_url {args.redis_url} --cleanup`")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except common.JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
