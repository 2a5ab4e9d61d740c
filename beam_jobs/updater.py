"""Fold behaviour events into stored interest states exactly once, whoever else writes.

Used by the stream job (one call per batch of entries) and by the roll-out's catch-up; no
Beam here. docs/beam_jobs.md, "Exactly-once states", states the guarantee; the mechanism:

* Behaviours are appended to the user's behaviour log (an idempotent ZADD) BEFORE the state
  write, so every event folded into a state is in the log. The log is the user's history in
  ``(event_time_ms, event_id)`` order.
* An event newer than the state's watermark ``(last_event_time_ms, last_event_id)`` is folded
  with the exported `step`, batched across users.
* An event at or below the watermark is decided against the log: if the log's events at or
  below the watermark number exactly ``events_applied``, a logged event is folded already (a
  duplicate). If they number more, the log holds an event the state lacks (a writer appended
  it and lost its race, or crashed): the user is rebuilt with the exported `tower` over the
  log. An event missing from the log is late: within `allowed_lateness_ms` of the watermark
  it is appended and the user is rebuilt; older than that it is dead-lettered.
* Every write is a compare-and-set on the header the updater read
  (`InterestStore.compare_and_set_states`). On a conflict the user is re-read and the
  events redone, up to `max_attempts` times; after that its events are `unapplied` and stay
  pending (never acknowledged, never counted as duplicates).

A corrupt or wrongly sized stored state is reported (`corrupt`) and rebuilt from the log.
Events more than `max_future_skew_ms` ahead of the clock are refused. Without the behaviour
log (`with_behaviours=False`) an event at or below the watermark cannot be decided: it is
dead-lettered, unless it is the watermark event itself.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from beam_jobs.model_handler import LoadedSignature, stack_examples, step_example, tower_example
from uic import contract
from uic.codec import now_ms
from uic.events import Event
from uic.store import (
    CONFLICT,
    DEFAULT_BEHAVIOUR_CAP,
    WRITTEN,
    CasRow,
    CorruptState,
    StoredState,
)

_LOG = logging.getLogger(__name__)
NO_WATERMARK = (-1, "")
DEFAULT_ALLOWED_LATENESS_MS = 3_600_000  # 1 hour
DEFAULT_MAX_FUTURE_SKEW_MS = 300_000  # 5 minutes
# A stream job batch's registration as an applier (`apply_between_pauses`) lasts this long at
# most: a roll-out waits for the batches in hand, and for no longer than this for the
# registration of a job that died mid-batch. A batch takes well under a second.
APPLY_LEASE_MS = 60_000
PAUSE_POLL_S = 0.05

# kinds of refused events (the stream job's counters and dead-letter reasons)
LATE, FUTURE, UNDECIDABLE, NO_LOG = "late", "future", "undecidable", "no_behaviour_log"


@dataclasses.dataclass(frozen=True)
class Refused:
    """An event that will not be applied, why (`kind`, one of the constants above) and the
    dead-letter reason."""

    event: Event
    kind: str
    reason: str


@dataclasses.dataclass(frozen=True)
class CorruptStored:
    """A stored state that was not usable (dead-lettered, then rebuilt from the log)."""

    user_id: int
    key: str
    reason: str
    value: bytes


@dataclasses.dataclass
class UpdateOutcome:
    version: int
    users: int = 0
    applied: int = 0  # events folded by a write of this call (step or rebuild)
    duplicates: int = 0  # events already folded into the state (re-deliveries)
    late_applied: int = 0  # late events (below the watermark, within the lateness) folded
    rebuilds: int = 0  # users rebuilt from the behaviour log with the tower
    new_users: int = 0  # started from the cold-start state
    states_written: int = 0
    cas_conflicts: int = 0  # writes refused because another writer got in between
    unapplied: list[Event] = dataclasses.field(default_factory=list)  # lost every CAS race
    refused: list[Refused] = dataclasses.field(default_factory=list)
    corrupt: list[CorruptStored] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Plan:
    """What one attempt does for one user."""

    expected: StoredState | CorruptState | None
    base: np.ndarray | None  # state to fold `new` into; None: rebuild from the log
    applied: int
    new: list[Event]  # events to append and fold
    carried: list[Event] = dataclasses.field(default_factory=list)  # logged, settled by a rebuild
    late: int = 0  # of `new`: late events within the allowed lateness


class StateUpdater:
    """Applies batches of events to one model's states (following the active version).

    Args:
      store: a `uic.store.InterestStore`.
      saved_models, model: where the exports live.
      version: pin a version; None follows the store's active-version pointer (falling back
        to the newest export when no pointer is set).
      max_step_events: events per user per `step` call (longer runs are chunked).
      behaviour_cap: the behaviour log's length per user (also the longest history a
        rebuild folds); with_behaviours: keep the log (needed to decide re-deliveries and
        to apply late events).
      allowed_lateness_ms: how far below the watermark a never-seen event is still applied
        (by a rebuild); older ones are refused.
      max_future_skew_ms: refuse events whose time is further than this ahead of now.
      max_attempts: compare-and-set attempts per user and call.
    """

    def __init__(self, store, saved_models: str | Path, model: str, version: int | None = None,
                 *, max_step_events: int = 64, behaviour_cap: int = DEFAULT_BEHAVIOUR_CAP,
                 with_behaviours: bool = True,
                 allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS,
                 max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS, max_attempts: int = 8):
        if max_step_events < 1:
            raise ValueError(f"max_step_events must be >= 1, got {max_step_events}")
        if allowed_lateness_ms < 0 or max_future_skew_ms < 0 or max_attempts < 1:
            raise ValueError("allowed_lateness_ms and max_future_skew_ms must be >= 0 and "
                             f"max_attempts >= 1; got {allowed_lateness_ms}, "
                             f"{max_future_skew_ms}, {max_attempts}")
        self.store = store
        self.saved_models = Path(saved_models)
        self.model = model
        self.pinned_version = version
        self.max_step_events = max_step_events
        self.behaviour_cap = behaviour_cap
        self.with_behaviours = with_behaviours
        self.allowed_lateness_ms = allowed_lateness_ms
        self.max_future_skew_ms = max_future_skew_ms
        self.max_attempts = max_attempts
        self._parts: dict[tuple[str, int], LoadedSignature] = {}
        self._cold: dict[int, np.ndarray] = {}
        self._fallback_logged = False

    # ---- versions and models -------------------------------------------------------------
    def resolve_version(self) -> int:
        if self.pinned_version is not None:
            return self.pinned_version
        active = self.store.get_active_version(self.model)
        if active is not None:
            return int(active)
        latest = contract.latest_version(self.saved_models, self.model, "step")
        if latest is None:
            raise FileNotFoundError(
                f"no active version set for {self.model} and no {self.model}_step export under "
                f"{self.saved_models}: run the backfill or pass --version")
        if not self._fallback_logged:
            _LOG.warning("no active version pointer for %s: using the newest export v%d",
                         self.model, latest)
            self._fallback_logged = True
        return latest

    def part(self, name: str, version: int) -> LoadedSignature:
        """The loaded `step` or `tower` export of `version` (loaded once)."""
        if (name, version) not in self._parts:
            path = contract.export_dir(self.saved_models, self.model, name, version)
            self._parts[(name, version)] = LoadedSignature(path, name)
        return self._parts[(name, version)]

    def cold_start(self, version: int) -> np.ndarray:
        """The version's cold-start state: from the store, else the tower on no history."""
        if version not in self._cold:
            state = self.store.read_cold_start(self.model, version)
            if state is None:
                state = self.towers(version, [[]])[0]
                self.store.write_cold_start(self.model, version, state)
                _LOG.info("wrote the cold-start state of %s v%d", self.model, version)
            self._cold[version] = np.asarray(state, dtype=np.float32)
        return self._cold[version]

    def towers(self, version: int, histories: Sequence[Sequence[Event]]) -> np.ndarray:
        """The exported tower over each history (oldest first), in one call."""
        tower = self.part("tower", version)
        return tower(stack_examples("tower", [
            tower_example([e.item_id for e in h], [e.category_id for e in h])
            for h in histories]))

    # ---- the update -----------------------------------------------------------------------
    def apply_between_pauses(self, events: Sequence[Event]) -> UpdateOutcome:
        """`apply` as the stream job runs it when it follows the active version: registered
        as an applier of the model for the call, once no roll-out pauses the model. A
        roll-out pauses the model, waits until no batch is registered, replays the stream's
        tail onto the new version and flips; so no event reaches the old version between its
        last catch-up and the flip (`beam_jobs.rollout`). Waits while paused (a pause
        expires by itself if its roll-out dies)."""
        if self.pinned_version is not None:
            return self.apply(events)
        applier = uuid.uuid4().hex
        while self.store.enter_apply(self.model, applier, now_ms() + APPLY_LEASE_MS) is not None:
            time.sleep(PAUSE_POLL_S)
        try:
            return self.apply(events)
        finally:
            self.store.leave_apply(self.model, applier)

    def apply(self, events: Sequence[Event], version: int | None = None,
              now: int | None = None) -> UpdateOutcome:
        """Fold `events` (any order, any users, duplicates allowed) into the states."""
        version = self.resolve_version() if version is None else version
        outcome = UpdateOutcome(version=version)
        horizon = (now_ms() if now is None else now) + self.max_future_skew_ms
        todo: dict[int, list[Event]] = {}
        for event in events:
            if event.event_time_ms > horizon:
                outcome.refused.append(Refused(event, FUTURE, (
                    f"future: event_time_ms {event.event_time_ms} is more than "
                    f"{self.max_future_skew_ms} ms ahead of now; fix the producer's clock "
                    "(or raise --max_future_skew_ms)")))
                continue
            todo.setdefault(event.user_id, []).append(event)
        for uid, evs in todo.items():
            unique = {e.sort_key: e for e in evs}
            outcome.duplicates += len(evs) - len(unique)  # the same event twice in one batch
            todo[uid] = [unique[k] for k in sorted(unique)]
        outcome.users = len(todo)
        for attempt in range(self.max_attempts):
            if not todo:
                break
            todo = self._attempt(version, todo, outcome, first=attempt == 0)
        if todo:
            outcome.unapplied = [e for evs in todo.values() for e in evs]
            _LOG.warning("%d events of %d users lost %d compare-and-set races in a row; they "
                         "stay pending and are retried on redelivery", len(outcome.unapplied),
                         len(todo), self.max_attempts)
        return outcome

    def _attempt(self, version: int, todo: dict[int, list[Event]], outcome: UpdateOutcome,
                 first: bool) -> dict[int, list[Event]]:
        """One read-decide-write round for the users in `todo`; returns the users (and
        their events) whose write met a conflict."""
        users = list(todo)
        stored = self.store.read_states(self.model, version, users, on_corrupt="report")
        cold = self.cold_start(version)
        plans: dict[int, _Plan] = {}
        to_check: dict[int, tuple[list[Event], StoredState]] = {}
        for uid, current in zip(users, stored, strict=True):
            plan = self._plan(version, uid, current, cold, todo[uid], outcome, first, to_check)
            if plan is not None:
                plans[uid] = plan
        if to_check:
            self._decide_old(to_check, plans, outcome)
        if not plans:
            return {}
        if self.with_behaviours:
            self.store.append_behaviours(
                (e for p in plans.values() for e in p.new), cap=self.behaviour_cap)
        rows = self._new_states(version, plans)
        results = self.store.compare_and_set_states(self.model, version, rows)
        retry: dict[int, list[Event]] = {}
        for row, result in zip(rows, results, strict=True):
            plan = plans[row.user_id]
            if result == WRITTEN:
                outcome.states_written += 1
                outcome.applied += len(plan.new) + len(plan.carried)
                outcome.late_applied += plan.late
                outcome.rebuilds += plan.base is None
            else:  # CONFLICT, or CORRUPT written in between: re-read and redo
                outcome.cas_conflicts += result == CONFLICT
                retry[row.user_id] = sorted(plan.new + plan.carried, key=lambda e: e.sort_key)
        return retry

    def _plan(self, version: int, uid: int, current, cold: np.ndarray, events: list[Event],
              outcome: UpdateOutcome, first: bool,
              to_check: dict[int, tuple[list[Event], StoredState]]) -> _Plan | None:
        unusable = self._unusable(uid, current, cold, version)
        if unusable is not None:
            if first:
                outcome.corrupt.append(unusable)
            if not self.with_behaviours:
                outcome.refused.extend(Refused(e, NO_LOG, (
                    f"stored state {unusable.key} is unusable ({unusable.reason}) and there "
                    "is no behaviour log to rebuild it from (--no_behaviours): rerun the "
                    "backfill for this user")) for e in events)
                return None
            return _Plan(current, None, 0, events)
        if current is None:
            if first:
                outcome.new_users += 1
            return _Plan(None, cold, 0, events)
        mark = current.watermark
        new = [e for e in events if e.sort_key > mark]
        old = [e for e in events if e.sort_key <= mark]
        if old and self.with_behaviours:
            to_check[uid] = (old, current)
        elif old:
            for e in old:
                if e.sort_key == mark:
                    outcome.duplicates += 1  # the watermark event itself: surely folded
                else:
                    outcome.refused.append(Refused(e, NO_LOG, (
                        f"at or below the state's watermark {mark} and there is no behaviour "
                        "log (--no_behaviours) to tell a re-delivery from a late event")))
        if not new and not old:
            return None
        return _Plan(current, current.state, current.events_applied, new)

    def _unusable(self, uid: int, current, cold: np.ndarray, version: int
                  ) -> CorruptStored | None:
        if isinstance(current, CorruptState):
            return CorruptStored(uid, current.key, current.reason, current.value)
        if isinstance(current, StoredState) and current.state.shape != cold.shape:
            return CorruptStored(uid, self.store.state_key(self.model, version, uid),
                                 f"state has {current.state.size} floats, the model's has "
                                 f"{cold.size}", b"")
        return None

    def _decide_old(self, to_check: dict[int, tuple[list[Event], StoredState]],
                    plans: dict[int, _Plan], outcome: UpdateOutcome) -> None:
        """Events at or below the watermark: duplicate, fold by a rebuild, or refuse."""
        users = list(to_check)
        logs = self.store.read_behaviour_logs(users, self.behaviour_cap)
        for uid, log in zip(users, logs, strict=True):
            old, current = to_check[uid]
            mark, count = current.watermark, current.events_applied
            logged = {e.sort_key for e in log}
            at_or_below = sum(1 for e in log if e.sort_key <= mark)
            # A log at the cap may have lost folded events off its old end, and one with
            # fewer events up to the watermark than the state folded lacks some: counting
            # it cannot tell a folded event from one a racing writer logged but never
            # folded, and a rebuild from it would drop history. Decide nothing from it.
            incomplete = len(log) >= self.behaviour_cap or at_or_below < count
            covers = mark in logged  # the log reaches the state's watermark event
            plan = plans[uid]
            # the log holds an event the state lacks
            rebuild = covers and not incomplete and at_or_below > count
            late: list[Event] = []
            for e in old:
                if e.sort_key == mark and not rebuild:
                    outcome.duplicates += 1  # the watermark's own event is folded
                elif incomplete or not covers:
                    outcome.refused.append(Refused(e, UNDECIDABLE, (
                        f"at or below the watermark {mark} of user {uid}, whose behaviour log "
                        f"({len(log)} events kept, --behaviour_cap {self.behaviour_cap}) does "
                        f"not hold all {count} events the state folded: cannot tell a "
                        "re-delivery from an event that was never applied. Raise "
                        "--behaviour_cap, or rebuild the user with the backfill")))
                elif e.sort_key in logged:
                    if rebuild:
                        plan.carried.append(e)
                    else:
                        outcome.duplicates += 1
                elif mark[0] - e.event_time_ms > self.allowed_lateness_ms:
                    outcome.refused.append(Refused(e, LATE, (
                        f"late: event ({e.event_time_ms}, {e.event_id}) is more than "
                        f"{self.allowed_lateness_ms} ms older than the state's watermark "
                        f"({mark[0]}, {mark[1]}); raise --allowed_lateness_ms or rerun the "
                        "backfill")))
                else:
                    late.append(e)
            if late or rebuild:
                plan.base = None  # rebuild from the log (which then holds `late` too)
                plan.new = sorted(plan.new + late, key=lambda e: e.sort_key)
                plan.late = len(late)

    def _new_states(self, version: int, plans: dict[int, _Plan]) -> list[CasRow]:
        rebuild = [u for u, p in plans.items() if p.base is None]
        fold = {u: p for u, p in plans.items() if p.base is not None and p.new}
        rows: list[CasRow] = []
        if rebuild:
            logs = self.store.read_behaviour_logs(rebuild, self.behaviour_cap)
            states = self.towers(version, logs)
            for uid, log, state in zip(rebuild, logs, states, strict=True):
                last = log[-1]  # never empty: the plan's events were appended first
                rows.append(CasRow(uid, state, len(log), last.event_time_ms, last.event_id,
                                   plans[uid].expected))
        if fold:
            states = self._fold(version, {u: p.base for u, p in fold.items()},
                                {u: p.new for u, p in fold.items()})
            for uid, plan in fold.items():
                last = plan.new[-1]
                rows.append(CasRow(uid, states[uid], plan.applied + len(plan.new),
                                   last.event_time_ms, last.event_id, plan.expected))
        return rows

    def _fold(self, version: int, states: dict[int, np.ndarray],
              new: dict[int, list[Event]]) -> dict[int, np.ndarray]:
        """Apply `step` to every user's new events, batched across users, in chunks."""
        step = self.part("step", version)
        current = dict(states)
        chunk = self.max_step_events
        offset = 0
        while True:
            users = [u for u, evs in new.items() if len(evs) > offset]
            if not users:
                return current
            examples = []
            for uid in users:
                part = new[uid][offset:offset + chunk]
                examples.append(step_example(current[uid], [e.item_id for e in part],
                                             [e.category_id for e in part]))
            out = step(stack_examples("step", examples))
            for i, uid in enumerate(users):
                current[uid] = out[i]
            offset += chunk
