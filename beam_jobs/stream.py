"""Streaming job: fold behaviour events into the interest states as they arrive.

    python -m beam_jobs.stream --model dien --saved_models saved_models \
        --redis_url redis://127.0.0.1:6390/0 [--stream uic:events] [--max_idle_seconds 10]

Pipeline (Beam streaming)::

    ReadFromRedisStream            batches of (entry id, Event JSON), one per poll
    | UpdateInterestStates         validate, apply `step` to each user's new events, CAS-write
    | AckRedisStream               dead letters to <stream>:dlq, then XACK

`UpdateInterestStates` validates each entry (bad ones become dead letters with the reason and
the raw payload), groups the batch by user, orders by (time, id), applies the exported
`step` to the new events of all users in one batched call per chunk, appends the behaviours
and compare-and-sets the states (`beam_jobs.updater`). New users start from the version's
cold-start state. The version followed is the store's active pointer (or `--version`).

A batch is one element from the read to the ack, so a user's batches are applied in order
and an entry is acknowledged only after its writes, without cross-bundle state. Parallelism
comes from more consumers in the group (more workers); docs/beam_jobs.md explains the
per-user ordering caveat this leaves.

Supervision (docs/beam_jobs.md, "Supervision"): Redis outages are waited out with back-off,
SIGTERM drains (the batch in hand is written and acknowledged, exit 0), `--metrics_port`
serves Prometheus metrics and `python -m beam_jobs.status` prints lag, pending entries and
dead letters.

Production sources (wired, not testable here: no Pub/Sub or Kafka on this machine):
`--source pubsub --pubsub_subscription projects/P/subscriptions/S`, or `--source kafka
--kafka_bootstrap host:9092 --kafka_topic T` (cross-language: needs Java on the workers);
there the runner acknowledges on checkpoint and the dead letters still go to
`<stream>:dlq` in Redis. Unknown flags go to Beam PipelineOptions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

import apache_beam as beam

from beam_jobs import DEFAULT_STREAM, common, live_metrics, metrics, supervision
from beam_jobs.metrics import Stream as M
from beam_jobs.redis_streams import (
    AckRedisStream,
    DeadLetter,
    Processed,
    ReadFromRedisStream,
    Record,
)
from beam_jobs.supervision import Abandoned, call_through_outages
from beam_jobs.updater import (
    DEFAULT_ALLOWED_LATENESS_MS,
    DEFAULT_MAX_FUTURE_SKEW_MS,
    FUTURE,
    LATE,
    NO_LOG,
    UNDECIDABLE,
)
from uic.store import DEFAULT_BEHAVIOUR_CAP, StoreConfig

_LOG = logging.getLogger("beam_jobs.stream")
NO_EVENT_FIELD = ("entry has no 'event' field (or was deleted while pending): XADD <stream> * event "
                  "<Event JSON>")


@dataclasses.dataclass(frozen=True)
class UpdateOptions:
    """What `UpdateInterestStates` updates and how (picklable: shipped to the workers).

    version None follows the store's active-version pointer. The lateness and skew bounds
    are `beam_jobs.updater.StateUpdater`'s."""

    store: StoreConfig
    saved_models: str
    model: str
    version: int | None = None
    max_step_events: int = 64
    behaviour_cap: int = DEFAULT_BEHAVIOUR_CAP
    with_behaviours: bool = True
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS


_REFUSED_COUNTERS = {LATE: M.late, FUTURE: M.future, UNDECIDABLE: M.undecidable,
                     NO_LOG: M.undecidable}


class _UpdateBatchFn(beam.DoFn):
    """A batch of records -> events applied and written -> `Processed` (what to ack and what
    to dead-letter). No entry stops the job: any failure to decode, validate or apply one
    entry makes it a dead letter with the reason. Entries whose events lost every CAS race
    are in neither list: they stay pending and are claimed again later. Redis outages are
    waited out (`beam_jobs.supervision`); other failures of Redis itself (permissions)
    escape, so the runner retries the bundle."""

    def __init__(self, options: UpdateOptions):
        self.options = options

    def setup(self):
        from beam_jobs.updater import StateUpdater

        opt = self.options
        self.store = call_through_outages(opt.store.connect, "connecting the updater")
        self.updater = StateUpdater(self.store, opt.saved_models, opt.model, opt.version,
                                    max_step_events=opt.max_step_events,
                                    behaviour_cap=opt.behaviour_cap,
                                    with_behaviours=opt.with_behaviours,
                                    allowed_lateness_ms=opt.allowed_lateness_ms,
                                    max_future_skew_ms=opt.max_future_skew_ms)

    def process(self, records: Sequence[Record]):
        M.batches.inc()
        M.entries.inc(len(records))
        events, entries_of, dead, ack = _decode(records)
        M.rejected.inc(len(dead))
        try:
            applied = self._apply(events)
        except Abandoned:
            _LOG.warning("stopping while Redis is unavailable: the %d entries of the batch in "
                         "hand stay pending and are re-read by the next run", len(records))
            return
        for user_events, outcome, error in applied:
            if error is not None:  # this user's events cannot be applied: dead letters
                M.update_errors.inc(len(user_events))
                for event in user_events:
                    for entry_id in entries_of.pop(_key(event), []):
                        dead.append(DeadLetter(entry_id, error, event.to_json()))
                        ack.append(entry_id)
                continue
            for name in ("duplicates", "applied", "users", "new_users", "states_written",
                         "cas_conflicts", "late_applied", "rebuilds"):
                getattr(M, name).inc(getattr(outcome, name))
            live_metrics.APPLIED.inc(outcome.applied)
            live_metrics.CAS_CONFLICTS.inc(outcome.cas_conflicts)
            M.unapplied.inc(len(outcome.unapplied))
            for bad in outcome.corrupt:
                M.corrupt_states.inc()
                dead.append(DeadLetter("", f"corrupt stored state {bad.key}: {bad.reason}; "
                                           "rebuilt from the behaviour log", bad.value))
            for refused in outcome.refused:
                _REFUSED_COUNTERS[refused.kind].inc()
                for entry_id in entries_of.pop(_key(refused.event), [""]):
                    dead.append(DeadLetter(entry_id, refused.reason, refused.event.to_json()))
                    if entry_id:
                        ack.append(entry_id)
            for event in outcome.unapplied:
                entries_of.pop(_key(event), None)  # stays pending
        ack.extend(i for ids in entries_of.values() for i in ids)  # applied or duplicates
        yield Processed(tuple(ack), tuple(dead))

    def _update(self, events):
        """The updater's apply, redone while Redis is unavailable: a redo after a partial
        write is safe (compare-and-set states, idempotent log, nothing acknowledged yet)."""
        return call_through_outages(lambda: self.updater.apply(events), "updating states")

    def _apply(self, events):
        """[(events, outcome, None)] for the batch, or per user when the batch fails; a user
        whose update fails has (events, None, reason). Raises `Abandoned` when the job stops
        during a Redis outage."""
        from uic.store import CorruptValue, StoreError

        if not events:
            return []
        try:
            return [(events, self._update(events), None)]
        except StoreError as err:
            if not isinstance(err, CorruptValue):
                raise  # Redis itself (not an outage): let the runner retry the bundle
            first = err
        except Exception as err:  # noqa: BLE001 - isolate the user(s) it comes from
            first = err
        _LOG.warning("batch update failed (%s: %s); applying user by user", type(first).__name__,
                     first)
        by_user: dict[int, list] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        out = []
        for user_events in by_user.values():
            try:
                out.append((user_events, self._update(user_events), None))
            except StoreError as err:
                if not isinstance(err, CorruptValue):
                    raise
                out.append((user_events, None, f"update failed: {err}"))
            except Exception as err:  # noqa: BLE001
                out.append((user_events, None, f"update failed: {type(err).__name__}: {err}"))
        return out

    def teardown(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.client.close()


def _key(event) -> tuple[int, int, str]:
    return (event.user_id, *event.sort_key)


def _decode(records: Sequence[Record]):
    """(events, entry ids per (user, time, id), dead letters, entry ids to ack) of a batch:
    every entry that cannot be decoded or validated, for whatever reason, is a dead letter."""
    from uic.events import Event, InvalidEvent

    events = []
    entries_of: dict[tuple[int, int, str], list[str]] = {}
    dead: list[DeadLetter] = []
    ack: list[str] = []
    for entry_id, payload in records:
        try:
            if payload is None:
                raise InvalidEvent(None, NO_EVENT_FIELD)
            event = Event.from_json(payload)
        except InvalidEvent as err:
            reason = f"invalid event: {err}"
        except Exception as err:  # noqa: BLE001 - a hostile payload must not stop the job
            reason = f"invalid event: {type(err).__name__}: {err}"
        else:
            events.append(event)
            if entry_id is not None:
                entries_of.setdefault(_key(event), []).append(entry_id)
            continue
        dead.append(DeadLetter(entry_id or "", reason, payload or b""))
        if entry_id is not None:
            ack.append(entry_id)
    return events, entries_of, dead, ack


class UpdateInterestStates(beam.PTransform):
    """PCollection of record batches -> PCollection of `Processed`, after the states and
    behaviour lists of the batch's events are written. Apply `AckRedisStream` to the output
    (for a Redis source) so entries are acknowledged only after their writes."""

    def __init__(self, options: UpdateOptions):
        super().__init__()
        self.options = options

    def expand(self, batches):
        return batches | "ApplyStep" >> beam.ParDo(_UpdateBatchFn(self.options))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.stream",
        description="Beam streaming job: apply the exported step model to behaviour events "
                    "from a Redis Stream (or Pub/Sub / Kafka) and compare-and-set the interest "
                    "states. Flags not listed here are passed to Beam.",
    )
    common.add_common_args(parser)
    parser.add_argument("--source", choices=["redis", "pubsub", "kafka"], default="redis",
                        help="event source (default: %(default)s; pubsub/kafka are for "
                             "distributed runners)")
    parser.add_argument("--stream", default=DEFAULT_STREAM,
                        help="Redis Stream to read (default: %(default)s); bad events go to "
                             "<stream>:dlq")
    parser.add_argument("--group", default="uic-stream", help="consumer group (default: %(default)s)")
    parser.add_argument("--consumer", default="worker-1",
                        help="consumer name; keep it stable across restarts so a restarted job "
                             "re-reads its own pending entries (default: %(default)s)")
    parser.add_argument("--start_id", default="0",
                        help="where a NEW consumer group starts: 0 = whole stream, $ = new "
                             "entries only (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=512,
                        help="max entries per poll (default: %(default)s)")
    parser.add_argument("--coalesce_ms", type=int, default=20,
                        help="after a poll returns entries, wait this long for more so a "
                             "user's burst is applied in one step call (default: %(default)s)")
    parser.add_argument("--block_ms", type=int, default=100,
                        help="XREADGROUP BLOCK time of an idle poll (default: %(default)s)")
    parser.add_argument("--claim_idle_ms", type=int, default=60_000,
                        help="take over entries other consumers left pending this long "
                             "(default: %(default)s)")
    parser.add_argument("--max_step_events", type=int, default=64,
                        help="events per user per step call; longer runs are chunked "
                             "(default: %(default)s)")
    parser.add_argument("--max_idle_seconds", type=float, default=None,
                        help="drain mode: stop after this long without new entries")
    parser.add_argument("--stop_after_seconds", type=float, default=None,
                        help="drain mode: stop after this long in total")
    parser.add_argument("--no_behaviours", action="store_true",
                        help="do not keep the behaviour log (Architecture A lists); events at "
                             "or below a state's watermark then cannot be decided and are "
                             "dead-lettered")
    parser.add_argument("--allowed_lateness_ms", type=int, default=DEFAULT_ALLOWED_LATENESS_MS,
                        help="a never-seen event up to this much older than its user's "
                             "watermark is applied exactly (the user is rebuilt from the "
                             "behaviour log); older ones are dead-lettered (default: "
                             "%(default)s = 1 hour)")
    parser.add_argument("--max_future_skew_ms", type=int, default=DEFAULT_MAX_FUTURE_SKEW_MS,
                        help="dead-letter events whose event_time_ms is further ahead of this "
                             "machine's clock (default: %(default)s = 5 minutes)")
    parser.add_argument("--metrics_port", type=int, default=0,
                        help="serve Prometheus metrics on 127.0.0.1:<port> (lag, pending "
                             "entries, dead letters, CAS conflicts, reconnects; 0 = off, "
                             "the default)")
    parser.add_argument("--pubsub_subscription", default=None,
                        help="--source pubsub: projects/<p>/subscriptions/<s> (Event JSON "
                             "messages)")
    parser.add_argument("--kafka_bootstrap", default=None, help="--source kafka: host:port,...")
    parser.add_argument("--kafka_topic", default=None, help="--source kafka: topic of Event JSON")
    return parser


def check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "max_step_events", "block_ms"):
        if getattr(args, name) < 1:
            raise common.JobError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.metrics_port < 65536:
        raise common.JobError(f"--metrics_port must be in 0..65535, got {args.metrics_port}")
    for name in ("coalesce_ms", "claim_idle_ms", "allowed_lateness_ms", "max_future_skew_ms"):
        if getattr(args, name) < 0:
            raise common.JobError(f"--{name} must be >= 0, got {getattr(args, name)}")
    for name in ("max_idle_seconds", "stop_after_seconds"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise common.JobError(f"--{name} must be > 0 seconds, got {value}")
    if args.source == "pubsub" and not args.pubsub_subscription:
        raise common.JobError("--source pubsub needs --pubsub_subscription "
                              "projects/<project>/subscriptions/<name>")
    if args.source == "kafka" and not (args.kafka_bootstrap and args.kafka_topic):
        raise common.JobError("--source kafka needs --kafka_bootstrap and --kafka_topic")


def read_batches(pipeline, args: argparse.Namespace, store: StoreConfig):
    """The source: batches of records from the Redis Stream, Pub/Sub or Kafka."""
    if args.source == "redis":
        try:
            return pipeline | "ReadStream" >> ReadFromRedisStream(
                store, args.stream, args.group, args.consumer, batch_size=args.batch_size,
                block_ms=args.block_ms, coalesce_ms=args.coalesce_ms,
                claim_idle_ms=args.claim_idle_ms, start_id=args.start_id,
                max_idle_seconds=args.max_idle_seconds,
                stop_after_seconds=args.stop_after_seconds)
        except ValueError as err:
            raise common.JobError(str(err)) from None
    if args.source == "pubsub":
        payloads = pipeline | "ReadPubSub" >> beam.io.ReadFromPubSub(
            subscription=args.pubsub_subscription)
    else:
        from apache_beam.io.kafka import ReadFromKafka

        payloads = (pipeline
                    | "ReadKafka" >> ReadFromKafka(
                        consumer_config={"bootstrap.servers": args.kafka_bootstrap},
                        topics=[args.kafka_topic])
                    | "Value" >> beam.Map(lambda kv: kv[1]))
    window_s = max(args.coalesce_ms, 1) / 1000.0
    return (payloads
            | "Record" >> beam.Map(lambda payload: (None, payload))
            | "Coalesce" >> beam.WindowInto(beam.window.FixedWindows(window_s))
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=args.batch_size))


def run(argv: Sequence[str] | None = None) -> dict[str, int]:
    """Parse arguments, run the job until it drains or is stopped (SIGTERM: finish the batch
    in hand, then end), return its counters."""
    args, beam_args = build_parser().parse_known_args(argv)
    common.setup_logging(args.verbose)
    check_args(args)
    version = args.version
    if version is not None:
        common.check_export(args.saved_models, args.model, version, ["step", "tower"])
    store_config = common.store_config(args)
    supervision.reset()
    with _stop_on_sigterm():
        store = _open_store_waiting(store_config)
        if version is None:
            active = call_through_outages(lambda: store.get_active_version(args.model),
                                          "reading the active version")
            check = common.check_export(args.saved_models, args.model, active, ["step", "tower"])
            _LOG.info("following the active version of %s (now v%d)", args.model, check)
        store.client.close()
        options = UpdateOptions(store_config, args.saved_models, args.model, version,
                                args.max_step_events, args.behaviour_cap, not args.no_behaviours,
                                args.allowed_lateness_ms, args.max_future_skew_ms)
        pipeline_options = common.pipeline_options(beam_args, streaming=True)
        pipeline = beam.Pipeline(runner=common.make_runner(pipeline_options),
                                 options=pipeline_options)
        (read_batches(pipeline, args, store_config)
         | "Update" >> UpdateInterestStates(options)
         | "Ack" >> AckRedisStream(store_config, args.stream, args.group))
        where = f"{args.source} {args.stream}" if args.source == "redis" else args.source
        stop = (f"drains after {args.max_idle_seconds}s idle" if args.max_idle_seconds
                else "SIGTERM or Ctrl-C to stop")
        stop_metrics = None
        if args.metrics_port:
            stop_metrics = live_metrics.serve(args.metrics_port, store_config, args.stream,
                                              args.group)
            print(f"metrics on http://127.0.0.1:{args.metrics_port}/metrics", flush=True)
        print(f"stream job: {args.model} from {where}; {stop}", flush=True)
        try:
            result = pipeline.run()
            result.wait_until_finish()
        finally:
            if stop_metrics is not None:
                stop_metrics()
    return metrics.totals(result, metrics.STREAM)


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM asks the job to drain (`supervision.request_stop`) while the block runs. Only
    the main thread may set signal handlers; elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, supervision.request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _open_store_waiting(config: StoreConfig):
    """The store, waiting while Redis is unavailable (a job restarted during an outage
    starts when Redis is back); other errors (credentials, TLS, URL) fail at once."""
    from uic.store import StoreError

    try:
        return call_through_outages(config.connect, "starting the stream job")
    except StoreError as err:
        raise common.JobError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        totals = run(argv)
    except common.JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Abandoned:
        print("stopped before Redis came back; nothing was read", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        print("stopped; unacknowledged entries stay pending and are re-read on restart",
              file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    common.print_summary(f"stream job stopped after {seconds:.1f} s", totals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
