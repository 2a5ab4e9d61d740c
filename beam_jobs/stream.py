"""Streaming job: fold behaviour events into the interest states as they arrive.

    python -m beam_jobs.stream --model dien --saved_models saved_models \
        --redis_url redis://127.0.0.1:6390/0 [--stream uic:events] [--max_idle_seconds 10]

Pipeline (Beam streaming): `ReadRedisStream` (an unbounded splittable DoFn polling the
stream with XREADGROUP; each poll, coalesced over `--coalesce_ms`, is one batch) ->
`UpdateStatesFn`: validate each entry (bad ones to `<stream>:dlq` with the reason and the raw
payload), group the batch by user, order by (time, id), apply the exported `step` to the new
events of all users in one batched call per chunk, compare-and-set the states, append the
behaviours, and only then acknowledge the entries. New users start from the version's
cold-start state. The version followed is the store's active pointer (or `--version`).

Why one DoFn does coalesce + step + CAS + ack: a user's batches must be applied in order and
the ack must follow the write; doing both inside the DoFn that owns the batch keeps that
true without cross-bundle state. Parallelism comes from more consumers in the group (more
workers), each owning its own batches (see README.md (Beam jobs) for the per-user ordering caveat).

Production sources (wired, not testable here: no Pub/Sub or Kafka on this machine):
`--source pubsub --pubsub_subscription projects/P/subscriptions/S`, or `--source kafka
--kafka_bootstrap host:9092 --kafka_topic T` (cross-language: needs Java on the workers);
there the runner acknowledges on checkpoint. Unknown flags go to Beam PipelineOptions.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs import DEFAULT_STREAM, common

_LOG = logging.getLogger("beam_jobs.stream")
NAMESPACE = "stream"


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    store: dict
    saved_models: str
    model: str
    version: int | None
    stream: str
    group: str
    max_step_events: int
    behaviour_cap: int
    with_behaviours: bool
    crash_after_writes: int | None = None  # testing: SIGKILL self after N writes, before ack


class UpdateStatesFn(beam.DoFn):
    """Batch of stream records -> validated, applied, written, acknowledged.

    Records are ``(entry_id, payload)``; `entry_id` None means the source acknowledges by
    itself (Pub/Sub, Kafka), otherwise entries are XACKed here after the writes.
    """

    def __init__(self, config: StreamConfig):
        self.config = config
        names = ["batches", "entries", "rejected", "late", "duplicates", "applied", "users",
                 "new_users", "states_written", "cas_retries", "unapplied"]
        self.counters = {n: Metrics.counter(NAMESPACE, n) for n in names}
        self.freshness = Metrics.distribution(NAMESPACE, "entry_to_write_ms")

    def setup(self):
        from beam_jobs.redis_source import StreamAcker
        from beam_jobs.updater import StateUpdater

        cfg = self.config
        self.store = common.open_store(cfg.store)
        self.updater = StateUpdater(self.store, cfg.saved_models, cfg.model, cfg.version,
                                    max_step_events=cfg.max_step_events,
                                    behaviour_cap=cfg.behaviour_cap,
                                    with_behaviours=cfg.with_behaviours)
        self.acker = StreamAcker(self.store.client, cfg.stream, cfg.group)
        self.writes = 0

    def process(self, records):
        handle_batch(self, records)


def handle_batch(fn, records) -> None:
    """The body of UpdateStatesFn.process (module level so it reads top to bottom)."""
    from beam_jobs.redis_source import entry_time_ms
    from uic.events import Event, InvalidEvent

    c = fn.counters
    c["batches"].inc()
    c["entries"].inc(len(records))
    events: list[Event] = []
    entries_of: dict[tuple[int, int, str], list[str]] = {}
    dead: list[tuple[str, str, bytes | str]] = []
    ackable: list[str] = []
    for entry_id, payload in records:
        if payload is None:
            dead.append((entry_id or "", "entry has no 'event' field: XADD <stream> * event "
                         "<Event JSON>", b""))
        else:
            try:
                event = Event.from_json(payload)
            except InvalidEvent as err:
                dead.append((entry_id or "", f"invalid event: {err}", payload))
            else:
                events.append(event)
                if entry_id is not None:
                    entries_of.setdefault((event.user_id, *event.sort_key), []).append(entry_id)
                continue
        if entry_id is not None:
            ackable.append(entry_id)
    c["rejected"].inc(len(dead))

    outcome = fn.updater.apply(events) if events else None
    if outcome is not None:
        c["late"].inc(len(outcome.late))
        for name in ("duplicates", "applied", "users", "new_users", "states_written",
                     "cas_retries"):
            c[name].inc(getattr(outcome, name))
        c["unapplied"].inc(len(outcome.unapplied))
        for event, reason in outcome.late:
            for entry_id in entries_of.get((event.user_id, *event.sort_key), [""]):
                dead.append((entry_id, reason, event.to_json()))
        held = {(e.user_id, *e.sort_key) for e in outcome.unapplied}
        for key, ids in entries_of.items():
            if key not in held:  # unapplied entries stay pending: XAUTOCLAIM retries them
                ackable.extend(ids)
        fn.writes += 1
        cfg = fn.config
        if cfg.crash_after_writes is not None and fn.writes >= cfg.crash_after_writes:
            _LOG.warning("crash injection: SIGKILL after write %d, before the ack", fn.writes)
            os.kill(os.getpid(), signal.SIGKILL)
    fn.acker.finish(ackable, dead)
    now_ms = time.time() * 1000.0
    for entry_id in ackable:
        if entry_id and entry_id[0].isdigit():
            fn.freshness.update(int(now_ms - entry_time_ms(entry_id)))


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
                        help="do not append to the Architecture A behaviour lists")
    parser.add_argument("--pubsub_subscription", default=None,
                        help="--source pubsub: projects/<p>/subscriptions/<s> (Event JSON "
                             "messages)")
    parser.add_argument("--kafka_bootstrap", default=None, help="--source kafka: host:port,...")
    parser.add_argument("--kafka_topic", default=None, help="--source kafka: topic of Event JSON")
    parser.add_argument("--crash_after_writes", type=int, default=None,
                        help="testing only: SIGKILL the job after N batch writes, before their "
                             "ack (shows at-least-once re-delivery is idempotent)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "max_step_events", "block_ms"):
        if getattr(args, name) < 1:
            raise common.JobError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("coalesce_ms", "claim_idle_ms"):
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


def build_pipeline(pipeline, args: argparse.Namespace, config: StreamConfig) -> None:
    """Add source -> UpdateStatesFn to `pipeline`."""
    if args.source == "redis":
        from beam_jobs.redis_source import ReadRedisStream

        batches = pipeline | "ReadStream" >> ReadRedisStream(
            args.redis_url, args.stream, args.group, args.consumer,
            batch_size=args.batch_size, block_ms=args.block_ms, coalesce_ms=args.coalesce_ms,
            claim_idle_ms=args.claim_idle_ms, start_id=args.start_id,
            max_idle_seconds=args.max_idle_seconds, stop_after_seconds=args.stop_after_seconds)
    else:
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
        batches = (payloads
                   | "Record" >> beam.Map(lambda payload: (None, payload))
                   | "Coalesce" >> beam.WindowInto(beam.window.FixedWindows(window_s))
                   | "Batch" >> beam.BatchElements(min_batch_size=1,
                                                   max_batch_size=args.batch_size))
    batches | "Update" >> beam.ParDo(UpdateStatesFn(config))


def run(argv: Sequence[str] | None = None) -> dict[str, int]:
    args, beam_args = build_parser().parse_known_args(argv)
    common.setup_logging(args.verbose)
    check_args(args)
    version = args.version
    if version is not None:
        common.check_export(args.saved_models, args.model, version, ["step", "tower"])
    store_config = common.store_config(args)
    store = common.open_store(store_config)
    if version is None:
        active = store.get_active_version(args.model)
        check = common.check_export(args.saved_models, args.model, active, ["step", "tower"])
        _LOG.info("following the active version of %s (now v%d)", args.model, check)
    config = StreamConfig(store_config, args.saved_models, args.model, version, args.stream,
                          args.group, args.max_step_events, args.behaviour_cap,
                          not args.no_behaviours, args.crash_after_writes)
    options = common.pipeline_options(beam_args, streaming=True)
    pipeline = beam.Pipeline(runner=common.make_runner(options), options=options)
    build_pipeline(pipeline, args, config)
    where = f"{args.source} {args.stream}" if args.source == "redis" else args.source
    stop = (f"drains after {args.max_idle_seconds}s idle" if args.max_idle_seconds
            else "Ctrl-C to stop")
    print(f"stream job: {args.model} from {where}; {stop}", flush=True)
    result = pipeline.run()
    result.wait_until_finish()
    return common.metric_totals(result, NAMESPACE)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        totals = run(argv)
    except common.JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; unacknowledged entries stay pending and are re-read on restart",
              file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    common.print_summary(f"stream job stopped after {seconds:.1f} s", totals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
