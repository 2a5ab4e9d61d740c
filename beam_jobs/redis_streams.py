"""Beam IO for Redis Streams: read through a consumer group, write entries, acknowledge.

Beam's Python SDK has no Redis connector, so this module is one, in the style of Beam's own
IOs. Every Redis call goes through `uic.store.InterestStore`, connected on the workers from
a picklable `uic.store.StoreConfig`.

* `ReadFromRedisStream` - PBegin -> unbounded PCollection of batches of `Record`
  ``(entry_id, payload)``, read as one consumer of a consumer group.
* `AckRedisStream` - PCollection of `Processed` -> dead letters added to
  ``<stream>:dlq``, then the entries acknowledged (XACK).
* `WriteToRedisStream` - PCollection of payloads -> one entry each (XADD), for pipelines that
  publish events; `beam_jobs.produce` is the rate-paced command-line counterpart.

Delivery is at-least-once: an entry read by `ReadFromRedisStream` stays pending in the group
until `AckRedisStream` acknowledges it, which a pipeline places after its writes. A consumer
that restarts re-reads its own pending entries first; entries another consumer left pending
for `claim_idle_ms` are taken over. So an entry may be processed more than once (a crash
between the writes and the ack), never lost: the writes it feeds must be idempotent. The
stream job's are (docs/beam_jobs.md, "Exactly-once states"): states are written by
compare-and-set on the header read, and the behaviour log decides re-deliveries.

An entry carries the Event JSON in its field ``event`` (`beam_jobs.EVENT_FIELD`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import WalltimeWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration

from beam_jobs import DEAD_LETTER_SUFFIX, EVENT_FIELD, live_metrics
from beam_jobs.metrics import Stream as M
from beam_jobs.supervision import Abandoned, call_through_outages, stop_requested
from uic.store import StoreConfig, StoreError, StoreUnavailable, StreamEntry

_LOG = logging.getLogger(__name__)
_END = 2**62  # "forever": one offset of the restriction per poll

Record = tuple[str | None, bytes | None]
"""(stream entry id, Event JSON). The id is None for sources that acknowledge by themselves
(Pub/Sub, Kafka); the payload is None when the entry has no ``event`` field or was deleted
while pending."""


def dead_letter_stream(stream: str) -> str:
    """Where `AckRedisStream` puts the dead letters of `stream`."""
    return stream + DEAD_LETTER_SUFFIX


def entry_time_ms(entry_id: str) -> int:
    """Redis server time (epoch ms) at which the entry was added (its id's first part)."""
    return int(entry_id.split("-", 1)[0])


def to_record(entry: StreamEntry) -> Record:
    return entry.entry_id, None if entry.fields is None else entry.fields.get(EVENT_FIELD)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An entry that cannot be applied, with the reason and its raw payload."""

    entry_id: str
    reason: str
    payload: bytes | str

    def fields(self, stream: str) -> dict[str, bytes | str]:
        return {"reason": self.reason, "payload": self.payload, "entry_id": self.entry_id,
                "stream": stream}


@dataclasses.dataclass(frozen=True)
class Processed:
    """What a consumer of a batch hands to `AckRedisStream`: the entries to acknowledge and
    the dead letters to record first. Entries in neither stay pending (they are retried)."""

    ack_ids: tuple[str, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()


# ---- read ---------------------------------------------------------------------------------
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


@dataclasses.dataclass(frozen=True)
class _ReadSpec:  # the arguments of ReadFromRedisStream, shipped to the workers
    store: StoreConfig
    stream: str
    group: str
    consumer: str
    batch_size: int
    block_ms: int
    coalesce_ms: int
    claim_idle_ms: int
    start_id: str
    max_idle_seconds: float | None
    stop_after_seconds: float | None


class _PollStreamFn(beam.DoFn):
    """A splittable DoFn whose endless offset range counts polls: each claimed position is
    one poll, a poll that returns entries is emitted as one batch and the rest of the
    restriction is deferred, so the runner commits the bundle at once."""

    def __init__(self, spec: _ReadSpec):
        self.spec = spec

    def setup(self):
        spec = self.spec
        self.store = call_through_outages(lambda: reader_config(spec).connect(),
                                          "connecting the stream reader")
        call_through_outages(self._create_group, "creating the consumer group")
        self.started = time.monotonic()
        self.last_data = self.started
        self.handed_over = False  # the last call emitted a batch
        self.pending_after: str | None = "0"  # own pending entries: re-read from here; None: done
        self.next_claim = self.started + spec.claim_idle_ms / 1000.0

    def _create_group(self) -> None:
        self.store.create_group(self.spec.stream, self.spec.group, self.spec.start_id)

    def _reread_pending(self) -> None:
        """After an outage: re-read this consumer's pending entries (acks the restarted
        Redis lost, or entries read by a poll the outage cut short)."""
        self.pending_after = "0"

    def _read(self, count: int, block_ms: int | None) -> list[Record]:
        try:
            return self._read_once(count, block_ms)
        except StoreUnavailable:
            raise
        except StoreError as err:
            if "NOGROUP" not in str(err):
                raise
        _LOG.warning("consumer group %s of %s is gone (Redis lost its data?): creating it "
                     "again from start id %s", self.spec.group, self.spec.stream,
                     self.spec.start_id)
        self._create_group()
        self._reread_pending()
        return self._read_once(count, block_ms)

    def _read_once(self, count: int, block_ms: int | None) -> list[Record]:
        spec, store = self.spec, self.store
        if self.pending_after is not None:
            entries = store.read_pending(spec.stream, spec.group, spec.consumer, count=count,
                                         after=self.pending_after)
            if entries:
                self.pending_after = entries[-1].entry_id
                M.entries_redelivered.inc(len(entries))
                return [to_record(e) for e in entries]
            self.pending_after = None
        if time.monotonic() >= self.next_claim:
            self.next_claim = time.monotonic() + spec.claim_idle_ms / 1000.0
            entries = store.claim_idle(spec.stream, spec.group, spec.consumer,
                                       min_idle_ms=spec.claim_idle_ms, count=count)
            if entries:
                M.entries_redelivered.inc(len(entries))
                return [to_record(e) for e in entries]
        entries = store.read_new(spec.stream, spec.group, spec.consumer, count=count,
                                 block_ms=block_ms)
        return [to_record(e) for e in entries]

    def _poll(self) -> list[Record]:
        """One poll, waiting out Redis outages; [] when the job stops during one."""
        try:
            return call_through_outages(self._poll_once, "reading the stream",
                                        on_recovery=self._reread_pending)
        except Abandoned:
            return []

    def _poll_once(self) -> list[Record]:
        spec = self.spec
        records = self._read(spec.batch_size, spec.block_ms)
        if records and spec.coalesce_ms > 0:
            deadline = time.monotonic() + spec.coalesce_ms / 1000.0
            while len(records) < spec.batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                records.extend(self._read(spec.batch_size - len(records), max(1, int(left * 1000))))
        return records

    def _should_stop(self) -> bool:
        if stop_requested():
            return True
        now, spec = time.monotonic(), self.spec
        if spec.stop_after_seconds is not None and now - self.started >= spec.stop_after_seconds:
            return True
        return spec.max_idle_seconds is not None and now - self.last_data >= spec.max_idle_seconds

    @beam.DoFn.unbounded_per_element()
    def process(self, element, tracker=_RESTRICTION, watermark=_WATERMARK):
        if self.handed_over:
            # idle time counts from when the previous batch's bundle ended: a fused runner
            # has applied and acknowledged it by now (the keyed update step applies a
            # bundle in its finish_bundle, after this method returned)
            self.last_data = time.monotonic()
            self.handed_over = False
        position = tracker.current_restriction().start
        while True:
            if self._should_stop():
                _LOG.info("stream reader stopping")
                tracker.try_claim(_END - 1)  # claim the rest: the restriction is done
                return
            if not tracker.try_claim(position):
                return
            position += 1
            M.polls.inc()
            records = self._poll()
            if records:
                M.entries_read.inc(len(records))
                yield records
                self.last_data = time.monotonic()
                self.handed_over = True
                tracker.defer_remainder(Duration.of(0))
                return

    def teardown(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.client.close()


def reader_config(spec: _ReadSpec) -> StoreConfig:
    """The reader's connection settings: its socket timeout covers the longest blocking
    XREADGROUP plus the store's own timeout (5 s when the store sets none), so an idle poll
    never times out while a hung Redis is still noticed."""
    wait_s = max(spec.block_ms, spec.coalesce_ms) / 1000.0
    return dataclasses.replace(spec.store,
                               socket_timeout_s=(spec.store.socket_timeout_s or 5.0) + wait_s,
                               connect_timeout_s=spec.store.connect_timeout_s or 5.0)


class ReadFromRedisStream(beam.PTransform):
    """PBegin -> unbounded PCollection of batches ``[Record, ...]`` read from `stream` as
    `consumer` of `group` (created if missing).

    Each poll is one XREADGROUP of up to `batch_size` entries waiting up to `block_ms`; once
    entries arrive it waits up to `coalesce_ms` more for the rest of the burst, so a user's
    burst is applied in one model call. On start the consumer first re-reads its own
    pending entries (what a killed run read but never acknowledged; keep `consumer` stable
    across restarts), and every `claim_idle_ms` it takes over entries other consumers left
    pending that long. Nothing is acknowledged here: see `AckRedisStream`.

    Redis outages are waited out with back-off (`beam_jobs.supervision`), after which the
    consumer re-reads its own pending entries; the read ends when a stop is requested
    (SIGTERM in the stream job). The reader's socket timeout is the store's plus the
    longest wait of a poll (`reader_config`).

    Args:
      store: where the stream lives. stream, group, consumer: what to read as whom (one
        consumer per worker; the group spreads entries over consumers).
      start_id: where a NEW group starts ("0": the whole stream, "$": only new entries).
      max_idle_seconds / stop_after_seconds: bounded drain mode, ending the read after that
        long without entries / in total (None: read forever).
    """

    def __init__(self, store: StoreConfig, stream: str, group: str, consumer: str = "worker-1",
                 *, batch_size: int = 512, block_ms: int = 100, coalesce_ms: int = 20,
                 claim_idle_ms: int = 60_000, start_id: str = "0",
                 max_idle_seconds: float | None = None, stop_after_seconds: float | None = None):
        super().__init__()
        if batch_size < 1 or block_ms < 1 or coalesce_ms < 0 or claim_idle_ms < 0:
            raise ValueError("batch_size and block_ms must be >= 1, coalesce_ms and "
                             f"claim_idle_ms >= 0; got {batch_size}, {block_ms}, {coalesce_ms}, "
                             f"{claim_idle_ms}")
        self.spec = _ReadSpec(store, stream, group, consumer, batch_size, block_ms, coalesce_ms,
                              claim_idle_ms, start_id, max_idle_seconds, stop_after_seconds)

    def expand(self, pbegin):
        return pbegin | "Start" >> beam.Impulse() | "Poll" >> beam.ParDo(_PollStreamFn(self.spec))


# ---- acknowledge --------------------------------------------------------------------------
class _AckFn(beam.DoFn):
    def __init__(self, store: StoreConfig, stream: str, group: str):
        self.config, self.stream, self.group = store, stream, group

    def setup(self):
        self.store = call_through_outages(self.config.connect, "connecting the acknowledger")

    def process(self, processed: Processed):
        dlq = dead_letter_stream(self.stream)
        try:
            call_through_outages(
                lambda: self.store.ack(
                    self.stream, self.group, list(processed.ack_ids),
                    dead_letters=[d.fields(self.stream) for d in processed.dead_letters],
                    dead_letter_stream=dlq),
                "acknowledging")
        except Abandoned:
            _LOG.warning("stopping while Redis is unavailable: %d entries stay pending and are "
                         "re-read (and found already applied) by the next run",
                         len(processed.ack_ids))
            return
        M.acked.inc(len(processed.ack_ids))
        M.dead_lettered.inc(len(processed.dead_letters))
        live_metrics.ACKED.inc(len(processed.ack_ids))
        live_metrics.DEAD_LETTERS.inc(len(processed.dead_letters))
        now_ms = time.time() * 1000.0
        for entry_id in processed.ack_ids:
            M.entry_to_ack_ms.update(int(now_ms - entry_time_ms(entry_id)))

    def teardown(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.client.close()


class AckRedisStream(beam.PTransform):
    """PCollection of `Processed` -> for each: its dead letters added to
    ``<stream>:dlq`` (fields reason, payload, entry_id, stream), then its entries
    acknowledged, in one round trip (`InterestStore.ack`).

    Apply it downstream of the writes the entries feed: an entry is acknowledged only after
    them, so a crash before the ack re-delivers it (at-least-once) and a crash in between
    can repeat a dead letter but not lose one. Acknowledging twice is harmless."""

    def __init__(self, store: StoreConfig, stream: str, group: str):
        super().__init__()
        self.store, self.stream, self.group = store, stream, group

    def expand(self, processed):
        return processed | "DeadLetterThenAck" >> beam.ParDo(
            _AckFn(self.store, self.stream, self.group))


# ---- write --------------------------------------------------------------------------------
class _WriteFn(beam.DoFn):
    def __init__(self, store: StoreConfig, stream: str, maxlen: int | None):
        self.config, self.stream, self.maxlen = store, stream, maxlen

    def setup(self):
        self.store = self.config.connect()

    def process(self, payloads: Sequence[bytes | str]):
        ids = self.store.add_to_stream(self.stream, ({EVENT_FIELD: p} for p in payloads),
                                       maxlen=self.maxlen)
        M.entries_written.inc(len(ids))
        yield from ids

    def teardown(self):
        store = getattr(self, "store", None)
        if store is not None:
            store.client.close()


class WriteToRedisStream(beam.PTransform):
    """PCollection of Event JSON payloads -> one stream entry each (``XADD <stream> * event
    <payload>``), batched; outputs the new entry ids. `maxlen` trims the stream to about
    that many entries.

    Not idempotent by itself: a retried bundle adds its entries again. That is safe for the
    stream job, which skips an event already folded into the state (same event id) as a
    duplicate."""

    def __init__(self, store: StoreConfig, stream: str, *, maxlen: int | None = None,
                 batch_size: int = 500):
        super().__init__()
        self.store, self.stream, self.maxlen, self.batch_size = store, stream, maxlen, batch_size

    def expand(self, payloads):
        return (payloads
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
                | "Xadd" >> beam.ParDo(_WriteFn(self.store, self.stream, self.maxlen)))
