"""Streaming job: fold behaviour events into the interest states as they arrive.

    python -m beam_jobs.stream --model dien --saved_models saved_models \
        --redis_url redis://127.0.0.1:6390/0 [--stream uic:events] [--max_idle_seconds 10]

Pipeline (Beam streaming)::

    ReadFromRedisStream            batches of (entry id, Event JSON), one per poll
    | UpdateInterestStates         validate, key by user shard, apply `step` to each user's
                                   new events in (time, id) order, CAS-write
    | AckRedisStream               dead letters to <stream>:dlq, then XACK

`UpdateInterestStates` (`beam_jobs.keyed_updates`) validates each entry (bad ones become
dead letters with the reason and the raw payload) and splits each batch by a stable hash
of the user id into `--key_shards` keys; a stateful DoFn keyed by shard applies a bundle's
elements with one `beam_jobs.updater.StateUpdater.apply` (the exported `step` batched
across users, behaviours appended, states compare-and-set) and hands what to acknowledge
and dead-letter to the ack. One user's events are thus applied by one worker at a time,
and an entry is acknowledged only after its writes. New users start from the version's
cold-start state. The version followed is the store's active pointer (or `--version`).
Consumers of one group (side-by-side jobs, XAUTOCLAIM) can still hold one user's entries
at once: the compare-and-set and the late-event rebuild keep the states exact
(docs/beam_jobs.md, "Per-user ordering").

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
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

import apache_beam as beam

from beam_jobs import DEFAULT_STREAM, common, live_metrics, metrics, supervision
from beam_jobs.keyed_updates import DEFAULT_KEY_SHARDS, UpdateInterestStates, UpdateOptions
from beam_jobs.redis_streams import AckRedisStream, ReadFromRedisStream
from beam_jobs.supervision import Abandoned, call_through_outages
from beam_jobs.updater import DEFAULT_ALLOWED_LATENESS_MS, DEFAULT_MAX_FUTURE_SKEW_MS
from uic.store import StoreConfig

_LOG = logging.getLogger("beam_jobs.stream")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # '--redis_password X' must not be taken for --redis_password_env
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
    parser.add_argument("--key_shards", type=int, default=DEFAULT_KEY_SHARDS,
                        help="users are hashed to this many keys; one key's events are applied "
                             "by one worker at a time, so it bounds the parallelism of the "
                             "update step on a distributed runner (default: %(default)s)")
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
    for name in ("batch_size", "max_step_events", "block_ms", "key_shards"):
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
    args, beam_args = common.parse_job_args(build_parser(), argv)
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
                                args.allowed_lateness_ms, args.max_future_skew_ms,
                                args.key_shards)
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
