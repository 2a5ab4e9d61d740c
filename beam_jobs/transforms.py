"""The backfill's building blocks (composite Beam transforms): read event files (with a
dead-letter output), build each user's ordered history, write states / cold start /
behaviour lists to the interest store. `beam_jobs.backfill.BackfillStates` wires them.

Events travel between stages as compact tuples ``(event_time_ms, event_id, item_id,
category_id, behavior_type)`` keyed by user id: deterministic to encode and a fraction of
the size of pickled dataclasses.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from beam_jobs.common import open_store
from beam_jobs.metrics import Backfill as M
from beam_jobs.model_handler import tower_example
from uic.events import Event
from uic.store import DEFAULT_BEHAVIOUR_CAP, StoreConfig

DEAD = "dead"
BEHAVIOURS = "behaviours"
COLD_START_KEY = "__cold_start__"

EventTuple = tuple[int, str, int, int, str]


def event_to_tuple(event: Event) -> EventTuple:
    return (event.event_time_ms, event.event_id, event.item_id, event.category_id,
            event.behavior_type)


def tuple_to_event(user_id: int, row: EventTuple) -> Event:
    t, eid, item, cate, kind = row
    return Event(user_id=user_id, item_id=item, category_id=cate, behavior_type=kind,
                 event_time_ms=t, event_id=eid)


def dead_letter(source: str, line: int | None, reason: str, raw: str | None) -> dict:
    """One dead-letter record (JSON line): where it came from, why, and the raw text."""
    return {"source": source, "line": line, "reason": reason, "raw": raw}


class _ReadFileFn(beam.DoFn):
    """Read one events file (JSONL or Taobao CSV) with the project's readers."""

    def __init__(self, cutoff_ms: int | None):
        self.cutoff_ms = cutoff_ms

    def process(self, path: str):
        from uic.event_files import read_events_with_errors

        bad: dict[int, str] = {}
        for event, error, line_no in read_events_with_errors(path):
            if event is None:
                M.rejected.inc()
                bad[line_no] = error or "unreadable record"
                continue
            M.events_read.inc()
            if self.cutoff_ms is not None and event.event_time_ms > self.cutoff_ms:
                M.after_cutoff.inc()
                continue
            yield (event.user_id, event_to_tuple(event))
        if bad:  # second pass only for files with bad lines: keep the raw text
            raw = _lines(path, set(bad))
            for line_no, reason in sorted(bad.items()):
                yield TaggedOutput(DEAD, dead_letter(path, line_no, reason, raw.get(line_no)))


def _lines(path: str, wanted: set[int]) -> dict[int, str]:
    from apache_beam.io.filesystems import FileSystems

    found: dict[int, str] = {}
    with FileSystems.open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if number in wanted:
                found[number] = line.decode("utf-8", errors="replace").rstrip("\r\n")
                if len(found) == len(wanted):
                    break
    return found


class ReadEventFiles(beam.PTransform):
    """File paths -> ``(user_id, EventTuple)`` (main output) and dead letters (``DEAD``).

    Events later than `cutoff_ms` (epoch ms) are dropped: the states are then those "as of"
    that time (point-in-time rebuild). Files are read whole, one per worker call: shard big
    logs into several files for parallelism on a distributed runner.
    """

    def __init__(self, paths: Sequence[str], cutoff_ms: int | None = None):
        super().__init__()
        self.paths = list(paths)
        self.cutoff_ms = cutoff_ms

    def expand(self, pbegin):
        return (
            pbegin
            | "Paths" >> beam.Create(self.paths)
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(_ReadFileFn(self.cutoff_ms)).with_outputs(DEAD, main="events")
        )


class _BuildHistoryFn(beam.DoFn):
    """A user's events -> the tower example, keyed by (user, events_applied, watermark)."""

    def __init__(self, max_history: int | None, behaviour_cap: int, with_behaviours: bool):
        self.max_history = max_history
        self.behaviour_cap = behaviour_cap
        self.with_behaviours = with_behaviours

    def process(self, element: tuple[int, Iterable[EventTuple]]):
        user_id, rows = element
        ordered = sorted(rows, key=lambda r: (r[0], r[1]))
        history: list[EventTuple] = []
        for row in ordered:  # the same event id twice is one event (replayed logs)
            if history and history[-1][1] == row[1] and history[-1][0] == row[0]:
                M.duplicates.inc()
                continue
            history.append(row)
        M.users.inc()
        M.events.inc(len(history))
        if self.with_behaviours:
            yield TaggedOutput(BEHAVIOURS, (user_id, history[-self.behaviour_cap:]))
        folded = history
        if self.max_history is not None and len(history) > self.max_history:
            folded = history[-self.max_history:]
            M.users_truncated.inc()
        M.history_length.update(len(folded))
        last = folded[-1]
        key = (user_id, len(folded), last[0], last[1])
        yield key, tower_example([r[2] for r in folded], [r[3] for r in folded])


class BuildHistories(beam.PTransform):
    """``(user_id, EventTuple)`` -> ``((user, events_applied, t, id), tower example)``.

    Orders each user's events by (time, event id), drops exact replays of an event, keeps
    the last `max_history` for the tower when set (the state then reflects only those, and
    `events_applied` counts only those). Side output ``BEHAVIOURS``: ``(user_id, newest
    events)`` for Architecture A's behaviour list.
    """

    def __init__(self, max_history: int | None = None,
                 behaviour_cap: int = DEFAULT_BEHAVIOUR_CAP,
                 with_behaviours: bool = True):
        super().__init__()
        if max_history is not None and max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.max_history = max_history
        self.behaviour_cap = behaviour_cap
        self.with_behaviours = with_behaviours

    def expand(self, events):
        return (
            events
            | "ByUser" >> beam.GroupByKey()
            | "Order" >> beam.ParDo(
                _BuildHistoryFn(self.max_history, self.behaviour_cap, self.with_behaviours)
            ).with_outputs(BEHAVIOURS, main="histories")
        )


class _WriteStatesFn(beam.DoFn):
    """Batches of (key, PredictionResult) -> compare-and-set writes under the version."""

    def __init__(self, store_config: StoreConfig, model: str, version: int):
        self.store_config = store_config
        self.model = model
        self.version = version

    def setup(self):
        self.store = open_store(self.store_config)

    def process(self, batch):
        rows = []
        for key, result in batch:
            if key == COLD_START_KEY:
                self.store.write_cold_start(self.model, self.version, result.inference)
                M.cold_start_written.inc()
                continue
            user_id, applied, t, eid = key
            rows.append((user_id, result.inference, applied, t, eid))
        if rows:
            outcome = self.store.write_states(self.model, self.version, rows)
            ok = sum(1 for w in outcome if w)
            M.states_written.inc(ok)
            # refused by the CAS: the store already holds a state with at least as many
            # events (e.g. the stream job got further); nothing is lost.
            M.states_not_newer.inc(len(rows) - ok)


class WriteStates(beam.PTransform):
    """Write tower outputs (and the cold-start row) to the interest store, batched."""

    def __init__(self, store_config: StoreConfig, model: str, version: int,
                 batch_size: int = 256):
        super().__init__()
        self.args = (store_config, model, version)
        self.batch_size = batch_size

    def expand(self, results):
        return (
            results
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "CAS" >> beam.ParDo(_WriteStatesFn(*self.args))
        )


class _AppendBehavioursFn(beam.DoFn):
    def __init__(self, store_config: StoreConfig, cap: int):
        self.store_config = store_config
        self.cap = cap

    def setup(self):
        self.store = open_store(self.store_config)

    def process(self, batch):
        events = itertools.chain.from_iterable(
            (tuple_to_event(user, row) for row in rows) for user, rows in batch)
        M.behaviours_appended.inc(self.store.append_behaviours(events, cap=self.cap))


class AppendBehaviours(beam.PTransform):
    """Fill Architecture A's capped per-user behaviour lists (idempotent on replay)."""

    def __init__(self, store_config: StoreConfig, cap: int, batch_size: int = 128):
        super().__init__()
        self.store_config = store_config
        self.cap = cap
        self.batch_size = batch_size

    def expand(self, behaviours):
        return (
            behaviours
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "Append" >> beam.ParDo(_AppendBehavioursFn(self.store_config, self.cap))
        )


class WriteDeadLetters(beam.PTransform):
    """Dead-letter records -> one JSON-lines file (`path`, written even when empty)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, records):
        return (
            records
            | "Json" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self.path, shard_name_template="", num_shards=1)
        )
