"""The Redis Streams Beam IO (beam_jobs.redis_streams) on the direct runner against real
Redis, without any model: what is read, re-read, claimed, dead-lettered and acknowledged."""

from __future__ import annotations

import apache_beam as beam

from beam_jobs import common, metrics
from beam_jobs.redis_streams import (
    AckRedisStream,
    DeadLetter,
    Processed,
    ReadFromRedisStream,
    WriteToRedisStream,
    dead_letter_stream,
)
from uic.store import StoreConfig
from uic.store import connect as store_connect

STREAM, GROUP = "io:events", "io-group"


def _run(build, *, streaming: bool) -> dict[str, int]:
    options = common.pipeline_options([], streaming=streaming)
    pipeline = beam.Pipeline(runner=common.make_runner(options), options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return metrics.totals(result, metrics.STREAM)


def _settle(batch):
    """Ack every entry except those whose payload says "hold"; dead-letter "bad" ones."""
    return Processed(
        ack_ids=tuple(i for i, p in batch if p != b"hold"),
        dead_letters=tuple(DeadLetter(i, "bad payload", p) for i, p in batch if p == b"bad"))


def _read_settle_ack(config: StoreConfig, **read_args):
    def build(pipeline):
        (pipeline
         | ReadFromRedisStream(config, STREAM, GROUP, "worker-1", max_idle_seconds=1,
                               coalesce_ms=0, **read_args)
         | beam.Map(_settle)
         | AckRedisStream(config, STREAM, GROUP))
    return build


def test_write_then_read_acknowledges_all_and_dead_letters_first(redis_url):
    config = StoreConfig(url=redis_url)
    payloads = [f"event-{i}" for i in range(30)] + ["bad", "hold"]
    totals = _run(lambda p: p | beam.Create(payloads) | WriteToRedisStream(config, STREAM),
                  streaming=False)
    store = store_connect(config)
    assert totals["entries_written"] == len(payloads) == store.stream_length(STREAM)

    totals = _run(_read_settle_ack(config, batch_size=7), streaming=True)
    assert totals["entries_read"] == len(payloads)
    assert totals["acked"] == len(payloads) - 1 and totals["dead_lettered"] == 1
    assert totals.get("entries_redelivered", 0) == 0
    assert store.pending_count(STREAM, GROUP) == 1  # "hold" was not acknowledged
    (dead,) = next(store.replay_stream(dead_letter_stream(STREAM)))
    assert dead.fields["payload"] == b"bad" and dead.fields["reason"] == b"bad payload"
    assert dead.fields["stream"] == STREAM.encode()

    # a restart re-reads exactly the entry left pending, and nothing else
    totals = _run(_read_settle_ack(config), streaming=True)
    assert totals["entries_read"] == totals["entries_redelivered"] == 1


def test_reader_takes_over_a_dead_consumers_pending_entries(redis_url):
    config = StoreConfig(url=redis_url)
    store = store_connect(config)
    store.add_to_stream(STREAM, [{"event": f"e{i}"} for i in range(10)])
    store.create_group(STREAM, GROUP)
    dead_worker = store.read_new(STREAM, GROUP, "worker-9", count=4)  # then it died
    assert [e.fields["event"] for e in dead_worker] == [b"e0", b"e1", b"e2", b"e3"]

    totals = _run(_read_settle_ack(config, claim_idle_ms=0), streaming=True)
    assert totals["entries_redelivered"] == 4
    assert totals["entries_read"] == 10
    assert store.pending_count(STREAM, GROUP) == 0


def _dead_letter_missing_payloads(batch):
    return Processed(ack_ids=tuple(i for i, _ in batch),
                     dead_letters=tuple(DeadLetter(i, "no event", b"") for i, p in batch
                                        if p is None))


def test_entry_without_event_field_reads_as_none(redis_url):
    config = StoreConfig(url=redis_url)
    store = store_connect(config)
    no_event, _ = store.add_to_stream(STREAM, [{"other": "x"}, {"event": "ok"}])
    _run(lambda p: (p | ReadFromRedisStream(config, STREAM, GROUP, max_idle_seconds=1)
                    | beam.Map(_dead_letter_missing_payloads)
                    | AckRedisStream(config, STREAM, GROUP)), streaming=True)
    dead = [e.fields for chunk in store.replay_stream(dead_letter_stream(STREAM)) for e in chunk]
    assert [d["entry_id"] for d in dead] == [no_event.encode()]
    assert store.pending_count(STREAM, GROUP) == 0


def test_a_block_longer_than_the_socket_timeout_is_no_outage(redis_url):
    """The reader's socket timeout covers its BLOCK time: idle polls of 600 ms on a store
    whose socket timeout is 0.2 s read normally and never count as a Redis outage."""
    config = StoreConfig(url=redis_url, socket_timeout_s=0.2)
    store_connect(config).add_to_stream(STREAM, [{"event": "a"}, {"event": "b"}])
    totals = _run(_read_settle_ack(config, block_ms=600), streaming=True)
    assert totals["acked"] == 2
    assert totals["polls"] >= 2 and "reconnects" not in totals
