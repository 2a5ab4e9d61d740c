"""The backfill's building blocks (composite Beam transforms): read event files (with a
dead-letter output), build each user's ordered history, write states / cold start /
behaviour lists to the interest store. `beam_jobs.backfill.BackfillStates` wires them.

Events travel between stages as compact tuples ``(event_time_ms, event_id, item_id,
category_id, behavior_type)`` keyed by user id: deterministic to encode and a fraction of
the size of pickled dataclasses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from beam_jobs.common import open_store
from beam_jobs.metrics import Backfill as M
from beam_jobs.model_handler import tower_example
from uic.events import Event
from uic.store import DEFAULT_BEHAVIOUR_CAP

DEAD = "dead"
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
        logged = tuple(history[-self.behaviour_cap:]) if self.with_behaviours else ()
        folded = history
        if self.max_history is not None and len(history) > self.max_history:
            folded = history[-self.max_history:]
            M.users_truncated.inc()
        M.history_length.update(len(folded))
        last = folded[-1]
        key = HistoryKey(user_id, len(folded), last[0], last[1], logged)
        yield key, tower_example([r[2] for r in folded], [r[3] for r in folded])


class HistoryKey(NamedTuple):
    """What travels with a user's tower example to the write: the header of the state it
    gives, and the newest `behaviour_cap` events for the behaviour log (empty without it)."""

    user_id: int
    events_applied: int
    last_event_time_ms: int
    last_event_id: str
    logged: tuple[EventTuple, ...]


class BuildHistories(beam.PTransform):
    """``(user_id, EventTuple)`` -> ``(HistoryKey, tower example)``.

    Orders each user's events by (time, event id), drops exact replays of an event, keeps
    the last `max_history` for the tower when set (the state then reflects only those, and
    `events_applied` counts only those).
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
                _BuildHistoryFn(self.max_history, self.behaviour_cap, self.with_behaviours))
        )


class _WriteStatesFn(beam.DoFn):
    """Batches of (HistoryKey, PredictionResult) -> states written beside a running stream
    job without erasing its updates (docs/beam_jobs.md, "Backfill beside the stream job").

    The history's events go to the behaviour log first. A user without a state gets the
    backfill's state. A user whose state covers only events of the backfill's history (every
    event in the log is one of them) gets the backfill's state, unless it already is that
    state. A user whose log holds events the backfill lacks (the stream job applied them) is
    rebuilt with the tower over the log, i.e. over the union. Every write is a
    compare-and-set on the state read; a conflict re-reads and decides again. Without the
    behaviour log the union is unknown: the state is replaced only by one with more events
    and a watermark not older."""

    def __init__(self, options):
        self.options = options

    def setup(self):
        self.store = open_store(self.options.store)
        self.tower = None

    def process(self, batch):
        opt = self.options
        todo: dict[int, tuple[HistoryKey, object]] = {}
        for key, result in batch:
            if key == COLD_START_KEY:
                self.store.write_cold_start(opt.model, opt.version, result.inference)
                M.cold_start_written.inc()
            else:
                todo[key.user_id] = (key, result.inference)
        if opt.with_behaviours and todo:
            events = (tuple_to_event(u, row) for u, (k, _) in todo.items() for row in k.logged)
            M.behaviours_appended.inc(self.store.append_behaviours(events, cap=opt.behaviour_cap))
        for _ in range(opt.max_attempts):
            if not todo:
                return
            todo = self._attempt(todo)
        M.states_unapplied.inc(len(todo))
        raise RuntimeError(f"{len(todo)} users kept losing compare-and-set races against "
                           "another writer; the runner retries this bundle")

    def _attempt(self, todo):
        from uic.store import WRITTEN, CasRow, StoredState

        opt = self.options
        users = list(todo)
        stored = self.store.read_states(opt.model, opt.version, users, on_corrupt="report")
        with_state = [u for u, s in zip(users, stored, strict=True) if s is not None]
        logs = dict(zip(with_state, self.store.read_behaviour_logs(with_state, opt.behaviour_cap),
                        strict=True)) if opt.with_behaviours and with_state else {}
        rows, merge = [], []
        for uid, current in zip(users, stored, strict=True):
            key, state = todo[uid]
            ours = CasRow(uid, state, key.events_applied, key.last_event_time_ms,
                          key.last_event_id, current)
            if current is None:
                rows.append(ours)
            elif isinstance(current, StoredState) and (
                    current.events_applied, current.watermark) == (
                    key.events_applied, (key.last_event_time_ms, key.last_event_id)):
                M.states_not_newer.inc()  # already this state (a re-run)
            elif not opt.with_behaviours:
                if (isinstance(current, StoredState)
                        and current.events_applied < key.events_applied
                        and current.watermark <= (key.last_event_time_ms, key.last_event_id)):
                    rows.append(ours)
                else:
                    M.states_not_newer.inc()
            elif {(r[0], r[1]) for r in key.logged} >= {e.sort_key for e in logs[uid]} and (
                    not isinstance(current, StoredState)
                    or current.watermark <= (key.last_event_time_ms, key.last_event_id)):
                rows.append(ours)  # the log (so the state) holds nothing the backfill lacks
            else:
                merge.append((uid, current))
        if merge:
            rows.extend(self._merged(merge, logs))
        results = self.store.compare_and_set_states(opt.model, opt.version, rows)
        retry = {}
        for row, result in zip(rows, results, strict=True):
            if result == WRITTEN:
                M.states_written.inc()
            else:
                M.cas_conflicts.inc()
                retry[row.user_id] = todo[row.user_id]
        return retry

    def _merged(self, merge, logs):
        """The tower over each user's log (the union of both writers' events)."""
        from beam_jobs.model_handler import LoadedSignature, stack_examples
        from uic import contract
        from uic.store import CasRow

        opt = self.options
        if self.tower is None:
            self.tower = LoadedSignature(
                contract.export_dir(opt.saved_models, opt.model, "tower", opt.version), "tower")
        histories = [logs[u][-opt.max_history:] if opt.max_history else logs[u]
                     for u, _ in merge]
        states = self.tower(stack_examples("tower", [
            tower_example([e.item_id for e in h], [e.category_id for e in h])
            for h in histories]))
        M.states_merged.inc(len(merge))
        return [CasRow(uid, state, len(h), h[-1].event_time_ms, h[-1].event_id, current)
                for (uid, current), h, state in zip(merge, histories, states, strict=True)]


class WriteStates(beam.PTransform):
    """Write tower outputs (and the cold-start row) to the interest store, batched, after
    appending each history to the behaviour log. `options` is a resolved
    `beam_jobs.backfill.BackfillOptions`."""

    def __init__(self, options, batch_size: int = 256):
        super().__init__()
        self.options = options
        self.batch_size = batch_size

    def expand(self, results):
        return (
            results
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "CAS" >> beam.ParDo(_WriteStatesFn(self.options))
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
