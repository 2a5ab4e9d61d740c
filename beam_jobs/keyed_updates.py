"""The stream job's update step, keyed by user shard so that one user's events are applied
by one worker at a time, in (time, event id) order.

::

    batches of records ─► KeyByShard ─► (shard, ShardWork) ─► ApplyShards (stateful) ─► Processed

`KeyByShard` decodes and validates each entry (a bad one becomes a dead letter with the
reason and the raw payload) and splits the batch into one element per key shard, the shard
being a stable hash of the user id (`shard_of`). The dead letters of a batch ride with one
of its elements rather than in a second output: a Flatten before the ack would split the
in-process runner's fused stage, which then acknowledges only after the read ends.

`ApplyShards` is a stateful DoFn keyed by shard: Beam processes the elements of one key one
bundle at a time, each bundle seeing the state the previous one committed, so a runner
never applies a shard's elements in two places at once. On Flink and Dataflow the runner
shuffles by key before it, so every element of a shard goes to the worker that owns the
shard; Beam's in-process FnApiRunner fuses it with the read, so there the reader that read
an element applies it.

Batching: `ApplyShards` buffers the elements of a bundle and applies them all in
`finish_bundle`, in one `StateUpdater.apply` (one batched `step` call per chunk of users of
the whole bundle, not one per shard), then emits what to acknowledge and dead-letter. That
keeps the per-key guarantee: a bundle's elements are applied before the bundle ends, and
the next bundle of the same key starts only after it. With the fused in-process runner a
bundle is one poll of the Redis Stream, exactly as before the keying.

Ordering across consumers is not the keying's to give: a consumer group hands one user's
entries to several consumers, XAUTOCLAIM re-delivers to another one, and jobs side by side
each have their own keyed step. There the compare-and-set, its retries and the late-event
rebuild of `beam_jobs.updater` keep the states exact (docs/beam_jobs.md, "Per-user
ordering").
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs import live_metrics
from beam_jobs.metrics import Stream as M
from beam_jobs.redis_streams import DeadLetter, Processed, Record
from beam_jobs.supervision import Abandoned, call_through_outages
from beam_jobs.updater import (
    DEFAULT_ALLOWED_LATENESS_MS,
    DEFAULT_MAX_FUTURE_SKEW_MS,
    FUTURE,
    LATE,
    NO_LOG,
    UNDECIDABLE,
)
from uic.events import Event, InvalidEvent
from uic.store import DEFAULT_BEHAVIOUR_CAP, StoreConfig

_LOG = logging.getLogger(__name__)
DEFAULT_KEY_SHARDS = 64
NO_EVENT_FIELD = ("entry has no 'event' field (or was deleted while pending): XADD <stream> * event "
                  "<Event JSON>")


@dataclasses.dataclass(frozen=True)
class ShardWork:
    """One key shard's part of a batch: its entries as (entry id, event) in (time, event id)
    order, and the dead letters of invalid entries of the batch (they belong to no user;
    they travel with one element of the batch)."""

    entries: tuple[tuple[str | None, Event], ...]
    rejected: tuple[DeadLetter, ...] = ()


@dataclasses.dataclass(frozen=True)
class UpdateOptions:
    """What `UpdateInterestStates` updates and how (picklable: shipped to the workers).

    version None follows the store's active-version pointer. The lateness and skew bounds
    are `beam_jobs.updater.StateUpdater`'s; key_shards is how many keys the users are
    hashed to (the most workers that can apply updates at once on a distributed runner)."""

    store: StoreConfig
    saved_models: str
    model: str
    version: int | None = None
    max_step_events: int = 64
    behaviour_cap: int = DEFAULT_BEHAVIOUR_CAP
    with_behaviours: bool = True
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS
    key_shards: int = DEFAULT_KEY_SHARDS


def shard_of(user_id: int, shards: int) -> int:
    """The key shard of a user: a hash that is the same in every process and on every run
    (Python's own `hash` of a str is not), so a shard's users never move."""
    return zlib.crc32(user_id.to_bytes(8, "little", signed=True)) % shards


# The keyed step's state: declared so that runners key the step, never read or written.
_KEYED = beam.DoFn.StateParam(ReadModifyWriteStateSpec("keyed", VarIntCoder()))
_REFUSED_COUNTERS = {LATE: M.late, FUTURE: M.future, UNDECIDABLE: M.undecidable,
                     NO_LOG: M.undecidable}


class _KeyByShardFn(beam.DoFn):
    """A batch of records -> one (shard, `ShardWork`) element per key shard it touches.
    Any exception while decoding one entry makes it a dead letter (acknowledged): a hostile
    payload never stops the job."""

    def __init__(self, shards: int):
        self.shards = shards

    def process(self, records: Sequence[Record]):
        M.batches.inc()
        M.entries.inc(len(records))
        by_shard: dict[int, list[tuple[str | None, Event]]] = {}
        dead: list[DeadLetter] = []
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
                by_shard.setdefault(shard_of(event.user_id, self.shards), []).append(
                    (entry_id, event))
                continue
            dead.append(DeadLetter(entry_id or "", reason, payload or b""))
        M.rejected.inc(len(dead))
        rejected = tuple(dead)
        for shard, entries in by_shard.items():
            yield shard, ShardWork(tuple(sorted(entries, key=lambda pair: pair[1].sort_key)),
                                   rejected)
            rejected = ()
        if rejected:  # a batch of invalid entries only
            yield 0, ShardWork((), rejected)


class _ApplyShardsFn(beam.DoFn):
    """(shard, `ShardWork`) elements -> `Processed` (what to acknowledge and dead-letter), after
    the entries' events are applied and written.

    Stateful so that it is keyed: a DoFn that declares state gets its input shuffled by key
    and the elements of one key run one bundle at a time, on one worker. `_KEYED` is
    declared for that alone and never read or written (per-shard data would have nowhere
    useful to go: states live in Redis, and events that lost their races stay pending in
    the stream, which redelivers them). The elements of a bundle are buffered and applied
    together in `finish_bundle` (see the module docstring), so the model is called once per
    chunk of users of the bundle.

    No entry stops the job: any failure to apply one user's events makes them dead letters
    with the reason. Entries whose events lost every CAS race are in neither list: they stay
    pending and are claimed again later. Redis outages are waited out
    (`beam_jobs.supervision`); other failures of Redis itself (permissions) escape, so the
    runner retries the bundle."""

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

    def start_bundle(self):
        self._bundle: list[tuple[ShardWork, object, object]] = []  # (work, window, timestamp)

    def process(self, element: tuple[int, ShardWork], _keyed=_KEYED,
                window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        _shard, work = element
        self._bundle.append((work, window, timestamp))
        return ()

    def finish_bundle(self):
        bundle, self._bundle = self._bundle, []
        if not bundle:
            return
        events = [event for work, _, _ in bundle for _, event in work.entries]
        entries_of: dict[tuple[int, int, str], list[str]] = {}
        for work, _, _ in bundle:
            for entry_id, event in work.entries:
                if entry_id is not None:
                    entries_of.setdefault(_key(event), []).append(entry_id)
        try:
            applied = self._apply(events) if events else []
        except Abandoned:
            _LOG.warning("stopping while Redis is unavailable: the %d entries in hand stay "
                         "pending and are re-read by the next run", len(events))
            return
        ack, dead = _settle(applied, entries_of)
        for work, _, _ in bundle:
            dead.extend(work.rejected)
            ack.extend(d.entry_id for d in work.rejected if d.entry_id)
        yield from _per_window(bundle, ack, dead)

    def _update(self, events):
        """The updater's apply, redone while Redis is unavailable: a redo after a partial
        write is safe (compare-and-set states, idempotent log, nothing acknowledged yet)."""
        return call_through_outages(lambda: self.updater.apply_between_pauses(events),
                                    "updating states")

    def _apply(self, events):
        """[(events, outcome, None)] for the bundle, or per user when the bundle fails; a
        user whose update fails has (events, None, reason). Raises `Abandoned` when the job
        stops during a Redis outage."""
        from uic.store import CorruptValue, StoreError

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


def _settle(applied, entries_of: dict[tuple[int, int, str], list[str]]
            ) -> tuple[list[str], list[DeadLetter]]:
    """(entry ids to acknowledge, dead letters) after the updates `applied`: applied events
    and duplicates are acknowledged, refused and failed ones dead-lettered (and
    acknowledged), events that lost every race left pending. Counts the outcomes."""
    ack: list[str] = []
    dead: list[DeadLetter] = []
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
    return ack, dead


def _per_window(bundle, ack: list[str], dead: list[DeadLetter]):
    """One `Processed` per window of the bundle's elements (a Redis source has one, the
    global window), emitted from `finish_bundle` with the window and the latest timestamp
    of its elements; a dead letter without an entry (a corrupt stored state) goes with the
    first window."""
    window_of: dict[str, object] = {}
    latest: dict[object, object] = {}
    for work, window, timestamp in bundle:
        latest[window] = max(latest.get(window, timestamp), timestamp)
        ids = [i for i, _ in work.entries] + [d.entry_id for d in work.rejected]
        window_of.update((i, window) for i in ids if i)
    first = bundle[0][1]
    acks: dict[object, list[str]] = {w: [] for w in latest}
    deads: dict[object, list[DeadLetter]] = {w: [] for w in latest}
    for entry_id in ack:
        acks[window_of.get(entry_id, first)].append(entry_id)
    for letter in dead:
        deads[window_of.get(letter.entry_id, first)].append(letter)
    for window in latest:
        if acks[window] or deads[window]:
            yield WindowedValue(Processed(tuple(acks[window]), tuple(deads[window])),
                                latest[window], [window])


class UpdateInterestStates(beam.PTransform):
    """PCollection of record batches -> PCollection of `Processed`, after the states and
    behaviour lists of the batches' events are written, keyed by user shard (module
    docstring). Apply `AckRedisStream` to the output (for a Redis source) so entries are
    acknowledged only after their writes."""

    def __init__(self, options: UpdateOptions):
        super().__init__()
        if options.key_shards < 1:
            raise ValueError(f"key_shards must be >= 1, got {options.key_shards}")
        self.options = options

    def expand(self, batches):
        return (batches
                | "KeyByShard" >> beam.ParDo(_KeyByShardFn(self.options.key_shards))
                .with_output_types(beam.typehints.KV[int, ShardWork])
                | "ApplyShards" >> beam.ParDo(_ApplyShardsFn(self.options)))
