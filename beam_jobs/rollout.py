"""Version roll-out and roll-back: build version v+1 while v keeps serving, then flip the
active pointer atomically; or flip back to a retired version that still has its states.

    python -m beam_jobs.rollout --model dien --events data/demo/events.jsonl \
        --saved_models saved_models --redis_url redis://127.0.0.1:6390/0 \
        --model_server 127.0.0.1:8500 [--version 2] [--stream uic:events] \
        [--retention_seconds 86400]
    python -m beam_jobs.rollout --model dien --rollback_to 1 --model_server 127.0.0.1:8500
    python -m beam_jobs.rollout --model dien --redis_url ... --cleanup

Roll-out: (1) backfill the new version's states from the logs with its own tower (keys carry
the version, so version v's states and the serving path are untouched); (2) optionally catch
up from the Redis Stream (`--stream`) with its `step`; (3) check the backfill is complete and
write the version's completeness mark; (4) with `--model_server`, wait until the model server
reports `<model>_head` (and `<model>_full`, if it serves that model) of the new version
AVAILABLE (GetModelStatus); (5) with `--stream`, pause the stream jobs (a flag they check before each
batch, with an expiry), wait until no batch is being applied, and replay the stream from the
entry where (2) stopped (what they applied to the old version meanwhile); (6) flip the
pointer with the store's flip script, which refuses unless the pointer is still the one this
run started from, the version is marked complete, no clean-up is deleting it, its cold-start
state exists and the pause still holds; then resume the jobs, which follow the new version
from their next batch; (7)
retire the old version. Its states outlive every client's cached pointer: at least
`--pointer_cache_seconds` plus `uic.store.IN_FLIGHT_GRACE_S`, even with
`--retention_seconds 0` (which waits that long, then deletes them).

Roll-back (`--rollback_to V`): the same checks and the same flip, to a version that still has
its states; the version rolled back from is retired like an old version. A clean-up deletes
a version only after marking it deleting, in a script that refuses an active version, so a
roll-back and a clean-up of the same version exclude each other (docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence

from beam_jobs import common
from beam_jobs.backfill import BackfillOptions, run_backfill
from beam_jobs.updater import APPLY_LEASE_MS, PAUSE_POLL_S
from client.tls import add_tls_args, tls_from_args
from uic import contract
from uic.store import DEFAULT_POINTER_CACHE_S, FlipRefused, min_retention_s, redact_url

DEFAULT_WAIT_S = 120.0
# Long enough to wait out the lease of a stream job that died mid-batch and then replay the
# stream's tail; normally the pause lasts about a second.
DEFAULT_PAUSE_S = APPLY_LEASE_MS / 1000 + 60.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.rollout",
        description="Backfill a new model version's interest states while the current version "
                    "keeps serving, then flip the active-version pointer atomically (or roll "
                    "back to a retired version with --rollback_to). Flags not listed here are "
                    "passed to the backfill's Beam pipeline.")
    common.add_common_args(parser)
    parser.add_argument("--events", nargs="+", metavar="FILE_OR_GLOB",
                        help="behaviour logs to backfill from (required for a roll-out)")
    parser.add_argument("--max_history", type=int, default=None,
                        help="as in the backfill: fold only each user's last N events")
    parser.add_argument("--stream", default=None,
                        help="also catch up from this Redis Stream's retained entries (events "
                             "the logs do not hold): once while the stream jobs run, then its "
                             "tail while they are paused, just before the flip")
    parser.add_argument("--pause_seconds", type=float, default=DEFAULT_PAUSE_S,
                        help="with --stream: the longest the stream jobs stay paused around "
                             "the flip (the pause expires by itself if this run dies; the flip "
                             "is refused if it expired first). Default: %(default)s")
    parser.add_argument("--rollback_to", type=int, default=None, metavar="V",
                        help="flip back to version V instead of rolling out: V must still have "
                             "its states (retired, not cleaned up) and be AVAILABLE on the "
                             "model server; no backfill")
    parser.add_argument("--retention_seconds", type=int, default=7 * 24 * 3600,
                        help="keep the old version's states this long after the flip for an "
                             "instant roll-back (default: 7 days). 0 deletes them as soon as "
                             "no client can still use them: after --pointer_cache_seconds + "
                             f"{min_retention_s(0):g} s, which this run waits for")
    parser.add_argument("--pointer_cache_seconds", type=float, default=DEFAULT_POINTER_CACHE_S,
                        help="the longest time your clients cache the active-version pointer "
                             "(client.Scorer active_ttl_s; default: %(default)s)")
    parser.add_argument("--cleanup", action="store_true",
                        help="only delete retired versions whose retention has passed")
    parser.add_argument("--force", action="store_true",
                        help="rebuild and flip even if the version is already active")
    server = parser.add_argument_group(
        "model server check",
        "Before the flip, ask the model server (gRPC ModelService.GetModelStatus) whether it "
        "serves the version; without --model_server the check is skipped with a warning.")
    server.add_argument("--model_server", metavar="HOST:PORT", default=None,
                        help="gRPC address of the model server the clients use")
    server.add_argument("--model_server_wait_seconds", type=float, default=DEFAULT_WAIT_S,
                        help="how long to wait for the version to become AVAILABLE "
                             "(default: %(default)s)")
    add_tls_args(server)
    return parser


def cleanup(store, model: str, now_ms: int | None = None) -> list[int]:
    """Delete the states of retired versions whose retention has passed; returns them."""
    deleted = store.delete_retired_versions(model, now_ms)
    for version, keys in deleted.items():
        print(f"deleted {keys:,} keys of {model} v{version} (retention passed)")
    return list(deleted)


def catch_up(store, options: BackfillOptions, stream: str, *, after: str | None = None,
             chunk: int = 2000) -> tuple[dict[str, int], str | None]:
    """Replay the stream's retained entries (after id `after`, if given) onto
    `options.version` with its `step`; returns the totals and the last entry id replayed.

    Idempotent by the watermark: what the logs already covered counts as duplicates. The
    catch-up inside the pause starts where the first one stopped."""
    from beam_jobs.redis_streams import to_record
    from beam_jobs.updater import StateUpdater
    from uic.events import Event, InvalidEvent

    updater = StateUpdater(store, options.saved_models, options.model, options.version,
                           behaviour_cap=options.behaviour_cap,
                           with_behaviours=options.with_behaviours)
    totals = {"entries": 0, "applied": 0, "duplicates": 0, "late_or_invalid": 0}
    last = after
    for entries in store.replay_stream(stream, after=after, chunk=chunk):
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
        last = entries[-1].entry_id
    return totals, last


def replay_and_report(store, options: BackfillOptions, stream: str, when: str,
                      after: str | None = None) -> str | None:
    """`catch_up` with a printed summary; returns the last entry id replayed."""
    totals, last = catch_up(store, options, stream, after=after)
    print(f"caught up from {stream} ({when}; after id {after or 'start'}): {totals}",
          flush=True)
    return last


def check_model_server(target: str, model: str, version: int, *, tls=None,
                       wait_s: float = DEFAULT_WAIT_S, poll_s: float = 0.5) -> list[str]:
    """Wait until the model server at `target` reports `<model>_head` `version` AVAILABLE,
    and `<model>_full` too when it serves that model at all (NOT_FOUND for the full model
    means Architecture A is not served here: fine). Raises JobError, saying what to do,
    when that does not happen within `wait_s`. Returns one line per model checked."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from client.transport import DEFAULT_GRPC_PORT, parse_target

    host, port = parse_target(target, DEFAULT_GRPC_PORT)
    address = f"{host}:{port}"
    channel = (grpc.insecure_channel(address) if tls is None
               else grpc.secure_channel(address, tls.grpc_credentials()))
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE

    def state_of(name: str) -> tuple[str, str]:
        """(state of `version` or a gRPC code, detail) as the server reports it now."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = stub.GetModelStatus(request, timeout=max(poll_s, 5.0))
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
        for status in response.model_version_status:
            if status.version == version:
                state = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
                return ("AVAILABLE" if status.state == available else state,
                        status.status.error_message)
        served = sorted(s.version for s in response.model_version_status)
        return "ABSENT", f"the server knows versions {served} of {name}"

    head = contract.serving_model_name(model, "head")
    full = contract.serving_model_name(model, "full")
    deadline = time.monotonic() + wait_s
    try:
        pending, lines, last = [head, full], [], {}
        while True:
            for name in list(pending):
                state, detail = last[name] = state_of(name)
                if state == "AVAILABLE":
                    lines.append(f"{name} v{version} AVAILABLE on {address}")
                    pending.remove(name)
                elif name == full and state == "NOT_FOUND":
                    lines.append(f"{name}: not served by {address} (NOT_FOUND), so no "
                                 "Architecture A client can use it; not checked")
                    pending.remove(name)
            if not pending:
                return lines
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_s)
    finally:
        channel.close()
    name = pending[0]
    state, detail = last[name]
    hint = ("is the model server running there? (--model_server is its gRPC port)"
            if state == "UNAVAILABLE" else
            f"export version {version} of {name} under the server's base_path, keep it in the "
            "version policy (serving_configs/models.config keeps the two newest versions), "
            "let the server load it, then re-run")
    raise common.JobError(
        f"the model server at {address} does not serve {name} v{version} AVAILABLE after "
        f"{wait_s:g} s (state {state}{': ' + detail if detail else ''}); the active version "
        f"stays as it is. {hint[0].upper()}{hint[1:]}, or raise --model_server_wait_seconds.")


def check_serving(args: argparse.Namespace, version: int) -> None:
    """The model-server check before a flip, or a warning that it was skipped."""
    if args.model_server is None:
        print(f"WARNING: --model_server not given: NOT checking that the model server serves "
              f"{args.model} v{version}. Clients get NOT_FOUND after the flip if it does not.",
              file=sys.stderr, flush=True)
        return
    print(f"waiting up to {args.model_server_wait_seconds:g} s for {args.model} v{version} on "
          f"the model server at {args.model_server} ...", flush=True)
    for line in check_model_server(args.model_server, args.model, version, tls=tls_from_args(args),
                                   wait_s=args.model_server_wait_seconds):
        print(line)


def flip(store, args: argparse.Namespace, old: int | None, new: int,
         pause_token: str | None = None) -> None:
    """The store's atomic flip from `old` to `new` (refused if the pause expired)."""
    try:
        store.flip_active_version(args.model, new, expected=old, pause_token=pause_token)
    except FlipRefused as err:
        raise common.JobError(str(err)) from None
    print(f"active version of {args.model}: v{old} -> v{new}", flush=True)


def wait_for_appliers(store, model: str, wait_s: float) -> float:
    """Wait until no stream job batch is being applied (the model is paused, so no new one
    starts); returns the seconds waited. A job that died mid-batch holds its lease to the
    end (`APPLY_LEASE_MS`)."""
    started = time.monotonic()
    while store.busy_appliers(model, int(time.time() * 1000)):
        if time.monotonic() - started > wait_s:
            raise common.JobError(f"stream job batches of {model} were still being applied "
                                  f"after {wait_s:g} s of pause; nothing was flipped. Re-run "
                                  "the roll-out (with a longer --pause_seconds)")
        time.sleep(PAUSE_POLL_S)
    return time.monotonic() - started


def caught_up_flip(store, args: argparse.Namespace, options: BackfillOptions | None,
                   old: int | None, new: int, reached: str | None) -> None:
    """The flip from `old` to `new`. With `--stream`, inside a pause of the stream jobs:
    once no batch is being applied, replay the stream's entries after `reached` (what the
    jobs applied to `old` since the first catch-up) onto `new`, flip, resume. No job can
    then apply an event to `old` alone, nor a newer event to `new` before an older one."""
    if not args.stream:
        flip(store, args, old, new)
        return
    token = uuid.uuid4().hex
    if not store.pause_appliers(args.model, token, int(args.pause_seconds * 1000)):
        raise common.JobError(f"another roll-out is pausing the stream jobs of {args.model} "
                              f"right now; wait for it (its pause ends within "
                              f"--pause_seconds), then re-run")
    paused = time.monotonic()
    try:
        waited = wait_for_appliers(store, args.model, args.pause_seconds / 2)
        print(f"paused the stream jobs of {args.model} (their batches in hand took "
              f"{waited:.2f} s)", flush=True)
        replay_and_report(store, options, args.stream, "while paused", after=reached)
        flip(store, args, old, new, token)
    finally:
        resumed = store.resume_appliers(args.model, token)
        print(f"stream jobs resumed after {time.monotonic() - paused:.2f} s"
              f"{'' if resumed else ' (the pause had expired)'}", flush=True)


def retire(store, args: argparse.Namespace, old: int | None, new: int) -> None:
    """Retire `old` after a flip to `new`: keep its states `--retention_seconds`, and never
    less than every client's cached pointer and its requests in flight can still use them."""
    if old is None or old == new:
        return
    if old not in store.complete_versions(args.model):
        # it served until now: a valid target for an instant roll-back
        store.mark_version_complete(args.model, old, 0)
    keep_s = max(float(args.retention_seconds), min_retention_s(args.pointer_cache_seconds))
    store.retire_version(args.model, old, int(time.time() * 1000 + keep_s * 1000))
    if args.retention_seconds > 0:
        print(f"v{old} states kept for {keep_s:g} s (roll back: `python -m beam_jobs.rollout "
              f"--model {args.model} --redis_url {redact_url(args.redis_url)} --rollback_to "
              f"{old}`); delete them later with `... --cleanup`")
        return
    print(f"waiting {keep_s:g} s until no client can still use v{old}, then deleting it",
          flush=True)
    time.sleep(keep_s)
    deleted = store.delete_inactive_version(args.model, old)
    if deleted is None:
        print(f"v{old} is active again (rolled back to meanwhile): kept")
    else:
        print(f"deleted {deleted:,} keys of v{old}")
    store.unretire_version(args.model, old)


def roll_out(store, config, args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    if not args.events:
        raise common.JobError("--events is required (the logs to backfill the new version "
                              "from), unless you run --cleanup or --rollback_to")
    new = common.check_export(args.saved_models, args.model, args.version, ["tower", "step"])
    old = store.get_active_version(args.model)
    if old == new and not args.force:
        print(f"{args.model} v{new} is already active; nothing to do (--force rebuilds it)")
        return 0
    if new in store.deleting_versions(args.model):
        raise common.JobError(f"a clean-up is deleting {args.model} v{new}; let it finish "
                              "(re-run --cleanup if it was interrupted), then re-run this")
    store.unretire_version(args.model, new)  # no clean-up may pick it from now on
    print(f"roll-out {args.model}: v{old} serving, backfilling v{new} ...", flush=True)

    options = BackfillOptions(
        model=args.model, events=args.events, store=config, saved_models=args.saved_models,
        version=new, max_history=args.max_history, behaviour_cap=args.behaviour_cap,
        activate="no", beam_args=tuple(beam_args))
    result = run_backfill(options)
    totals = result.totals
    users = totals.get("users", 0)
    done = totals.get("states_written", 0) + totals.get("states_not_newer", 0)
    cold = store.read_cold_start(args.model, new) is not None
    if users == 0:  # an empty log, or a runner that reports no Beam metrics: nothing proven
        raise common.JobError(
            f"the backfill of v{new} reported no users (empty logs, or a runner that does not "
            f"report Beam metrics, so completeness cannot be checked); the active version "
            f"stays v{old}. Check --events, or run the roll-out's backfill on a runner that "
            "reports metrics.")
    if done != users or not cold:
        raise common.JobError(
            f"backfill of v{new} is incomplete ({done} of {users} users written, cold start "
            f"{'present' if cold else 'missing'}); the active version stays v{old}. Re-run "
            "the roll-out.")
    print(f"backfilled v{new}: {users:,} users, {totals.get('events', 0):,} events in "
          f"{result.seconds:.1f} s")
    reached = None
    if args.stream:
        reached = replay_and_report(store, options, args.stream, "while the stream jobs run")
    if not store.mark_version_complete(args.model, new, users):
        raise common.JobError(f"a clean-up started deleting v{new} during the roll-out; "
                              "re-run the roll-out")
    check_serving(args, new)
    caught_up_flip(store, args, options, old, new, reached)
    retire(store, args, old, new)
    return 0


def roll_back(store, config, args: argparse.Namespace) -> int:
    target = args.rollback_to
    old = store.get_active_version(args.model)
    if old == target:
        print(f"{args.model} v{target} is already active; nothing to do")
        return 0
    if target not in store.complete_versions(args.model):
        raise common.JobError(
            f"{args.model} v{target} has no complete states to roll back to (never marked "
            "complete, or cleaned up). Rebuild it with a roll-out: python -m beam_jobs.rollout "
            f"--model {args.model} --version {target} --events LOGS ...")
    print(f"roll-back {args.model}: v{old} -> v{target}", flush=True)
    options = reached = None
    if args.stream:
        common.check_export(args.saved_models, args.model, target, ["tower", "step"])
        options = BackfillOptions(model=args.model, events=(), store=config,
                                  saved_models=args.saved_models, version=target,
                                  behaviour_cap=args.behaviour_cap, activate="no")
        reached = replay_and_report(store, options, args.stream, "while the stream jobs run")
    check_serving(args, target)
    caught_up_flip(store, args, options, old, target, reached)
    store.unretire_version(args.model, target)
    retire(store, args, old, target)
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    args, beam_args = common.parse_job_args(build_parser(), argv)
    common.setup_logging(args.verbose)
    if args.retention_seconds < 0:
        raise common.JobError(f"--retention_seconds must be >= 0, got {args.retention_seconds}")
    if args.pause_seconds <= 0:
        raise common.JobError(f"--pause_seconds must be > 0, got {args.pause_seconds}")
    if args.pointer_cache_seconds < 0:
        raise common.JobError("--pointer_cache_seconds must be >= 0, got "
                              f"{args.pointer_cache_seconds}")
    config = common.store_config(args)
    store = common.open_store(config)
    if args.cleanup:
        deleted = cleanup(store, args.model)
        print(f"cleanup: {len(deleted)} retired version(s) deleted {deleted}")
        return 0
    if args.rollback_to is not None:
        return roll_back(store, config, args)
    return roll_out(store, config, args, beam_args)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except common.JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
