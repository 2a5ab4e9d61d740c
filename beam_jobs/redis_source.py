"""An unbounded Beam source for a Redis Stream, read through a consumer group.

Beam's Python SDK has no Redis source, so `ReadRedisStream` is a small splittable DoFn:
each claimed position of an endless offset range is one poll (`XREADGROUP ... COUNT n BLOCK
ms`); a poll that returns entries waits up to `coalesce_ms` for more (so a user's burst is
folded in one model call), emits them as ONE batch element ``[(entry_id, payload), ...]``,
and defers the rest of the restriction so the runner commits the bundle at once.

Delivery is at-least-once: entries stay in the group's pending list until the consumer of
the batch acknowledges them (`ack`) after its Redis writes. On start the reader first
re-reads this consumer's own pending entries (id 0: what a killed run read but never
acknowledged), then new ones (id >); every `claim_idle_ms` it also takes over entries that
other, dead consumers left pending for that long (XAUTOCLAIM).

Bounded "drain" modes for tests and demos: `max_idle_seconds` ends the read after that long
without entries, `stop_after_seconds` after that long in total.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import WalltimeWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration

from beam_jobs import EVENT_FIELD

_LOG = logging.getLogger(__name__)
_END = 2**62  # "forever": one offset per poll
Record = tuple[str, bytes | None]  # (stream entry id, Event JSON or None when missing)


def dlq_name(stream: str) -> str:
    """The dead-letter stream of `stream`."""
    return f"{stream}:dlq"


def ensure_group(client, stream: str, group: str, start_id: str = "0") -> None:
    """Create the consumer group (and the stream) if missing; `start_id` '0' = from the start."""
    import redis

    try:
        client.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def to_records(entries) -> list[Record]:
    out = []
    for entry_id, fields in entries or []:
        if fields is None:  # entry deleted while pending
            continue
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        payload = fields.get(EVENT_FIELD.encode(), fields.get(EVENT_FIELD))
        out.append((eid, payload if payload is not None else None))
    return out


def entry_time_ms(entry_id: str) -> int:
    """The Redis server time (ms) at which the entry was added (its id's first part)."""
    return int(entry_id.split("-", 1)[0])


class _Restrictions(RestrictionProvider):
    def initial_restriction(self, element):
        return OffsetRange(0, _END)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element, restriction):
        return 1

    def truncate(self, element, restriction):
        return None  # on drain, stop reading: pending entries are re-read by the next run


_RESTRICTION = beam.DoFn.RestrictionParam(_Restrictions())
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(WalltimeWatermarkEstimator.default_provider())


class _PollStreamFn(beam.DoFn):
    def __init__(self, url: str, stream: str, group: str, consumer: str, *, batch_size: int,
                 block_ms: int, coalesce_ms: int, claim_idle_ms: int, start_id: str,
                 max_idle_seconds: float | None, stop_after_seconds: float | None):
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.coalesce_ms = coalesce_ms
        self.claim_idle_ms = claim_idle_ms
        self.start_id = start_id
        self.max_idle_seconds = max_idle_seconds
        self.stop_after_seconds = stop_after_seconds
        self.polls = Metrics.counter("stream", "polls")
        self.read = Metrics.counter("stream", "entries_read")
        self.redelivered = Metrics.counter("stream", "entries_redelivered")

    def setup(self):
        import redis

        self.client = redis.Redis.from_url(self.url)
        ensure_group(self.client, self.stream, self.group, self.start_id)
        self.started = time.monotonic()
        self.last_data = self.started
        self.pending_done = False  # own pending list re-read yet?
        self.next_claim = self.started + self.claim_idle_ms / 1000.0

    def _read(self, count: int, block_ms: int | None) -> list[Record]:
        if not self.pending_done:
            res = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"},
                                         count=count)
            records = to_records(res[0][1] if res else [])
            if records:
                self.redelivered.inc(len(records))
                return records
            self.pending_done = True
        if time.monotonic() >= self.next_claim:
            self.next_claim = time.monotonic() + self.claim_idle_ms / 1000.0
            claimed = self.client.xautoclaim(self.stream, self.group, self.consumer,
                                             min_idle_time=self.claim_idle_ms, count=count)
            records = to_records(claimed[1] if claimed else [])
            if records:
                self.redelivered.inc(len(records))
                return records
        res = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                     count=count, block=block_ms)
        return to_records(res[0][1] if res else [])

    def _poll(self) -> list[Record]:
        records = self._read(self.batch_size, self.block_ms)
        if records and self.coalesce_ms > 0 and len(records) < self.batch_size:
            deadline = time.monotonic() + self.coalesce_ms / 1000.0
            while len(records) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                more = self._read(self.batch_size - len(records), max(1, int(left * 1000)))
                records.extend(more)
        return records

    def _should_stop(self) -> bool:
        now = time.monotonic()
        if self.stop_after_seconds is not None and now - self.started >= self.stop_after_seconds:
            return True
        return self.max_idle_seconds is not None and now - self.last_data >= self.max_idle_seconds

    @beam.DoFn.unbounded_per_element()
    def process(self, element, tracker=_RESTRICTION, watermark=_WATERMARK):
        position = tracker.current_restriction().start
        while True:
            if self._should_stop():
                _LOG.info("stream reader stopping (drain mode)")
                tracker.try_claim(_END - 1)  # claim the rest: the restriction is done
                return
            if not tracker.try_claim(position):
                return
            position += 1
            self.polls.inc()
            records = self._poll()
            if records:
                self.read.inc(len(records))
                yield records
                # idle time counts from when the batch was handed over (a fused runner has
                # already run the downstream writes by now)
                self.last_data = time.monotonic()
                tracker.defer_remainder(Duration.of(0))  # hand the batch downstream now
                return

    def teardown(self):
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


class ReadRedisStream(beam.PTransform):
    """PBegin -> unbounded PCollection of polled batches ``[(entry_id, payload), ...]``.

    Args:
      url: Redis URL; stream, group, consumer: what to read as whom (one consumer per
        worker; the group spreads entries over consumers).
      batch_size: max entries per poll; block_ms: how long one XREADGROUP waits;
      coalesce_ms: after the first entries arrive, wait this long for more of the burst.
      claim_idle_ms: take over other consumers' entries pending this long.
      start_id: where a NEW group starts ("0": the whole stream, "$": only new entries).
      max_idle_seconds / stop_after_seconds: bounded drain mode (None: run forever).
    """

    def __init__(self, url: str, stream: str, group: str = "uic", consumer: str = "worker-1",
                 *, batch_size: int = 512, block_ms: int = 100, coalesce_ms: int = 20,
                 claim_idle_ms: int = 60_000, start_id: str = "0",
                 max_idle_seconds: float | None = None, stop_after_seconds: float | None = None):
        super().__init__()
        self.fn = _PollStreamFn(url, stream, group, consumer, batch_size=batch_size,
                                block_ms=block_ms, coalesce_ms=coalesce_ms,
                                claim_idle_ms=claim_idle_ms, start_id=start_id,
                                max_idle_seconds=max_idle_seconds,
                                stop_after_seconds=stop_after_seconds)

    def expand(self, pbegin):
        return pbegin | "Start" >> beam.Impulse() | "Poll" >> beam.ParDo(self.fn)


class StreamAcker:
    """Acknowledge entries and dead-letter bad ones (one pipelined round trip)."""

    def __init__(self, client, stream: str, group: str):
        self.client = client
        self.stream = stream
        self.group = group
        self.dlq = dlq_name(stream)

    def finish(self, entry_ids: Sequence[str], dead: Sequence[tuple[str, str, bytes | str]]
               ) -> None:
        """XADD each (entry_id, reason, raw payload) to the DLQ, then XACK all entry ids.

        The dead letters are sent first in the same pipeline, so a crash can at worst repeat
        a dead letter (at-least-once), never ack an entry whose dead letter is lost. No
        MULTI: on Redis Cluster the stream and its DLQ may live on different slots.
        """
        if not entry_ids and not dead:
            return
        pipe = self.client.pipeline(transaction=False)
        for entry_id, reason, raw in dead:
            pipe.xadd(self.dlq, {"reason": reason, "payload": raw if raw is not None else b"",
                                 "entry_id": entry_id, "stream": self.stream})
        if entry_ids:
            pipe.xack(self.stream, self.group, *entry_ids)
        pipe.execute()
