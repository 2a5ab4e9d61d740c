"""Fold new behaviour events into stored interest states with the exported `step`.

Used by the stream job (one call per polled batch) and by the roll-out's catch-up; no Beam
here. Idempotency (docs/beam_jobs.md, "Idempotency"): an event is applied to a stored state only if its
``(event_time_ms, event_id)`` is greater than the state's watermark
``(last_event_time_ms, last_event_id)``. Older events are either duplicates (the event is
already in the user's behaviour log: a re-delivery; skipped and counted) or late (never
seen: returned so the caller dead-letters them with reason "late"). Behaviours are appended
BEFORE the state write, so every event folded into a state is in the behaviour log and a
re-delivery is recognised as a duplicate.

Writes go through one store method, `InterestStore.write_states`, a compare-and-set (replace
only with more events applied). If another
writer got in between our read and our write (the CAS refuses), the user is re-read and the
events past the new watermark are applied again, up to `max_attempts` times.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from beam_jobs.model_handler import LoadedSignature, stack_examples, step_example, tower_example
from uic import contract
from uic.events import Event
from uic.store import DEFAULT_BEHAVIOUR_CAP

_LOG = logging.getLogger(__name__)
NO_WATERMARK = (-1, "")


@dataclasses.dataclass
class UpdateOutcome:
    version: int
    users: int = 0
    applied: int = 0  # events folded into states
    duplicates: int = 0  # re-deliveries skipped
    new_users: int = 0  # started from the cold-start state
    states_written: int = 0
    cas_retries: int = 0
    unapplied: list[Event] = dataclasses.field(default_factory=list)  # lost every CAS race
    late: list[tuple[Event, str]] = dataclasses.field(default_factory=list)


class StateUpdater:
    """Applies batches of events to one model's states (following the active version).

    Args:
      store: a `uic.store.InterestStore`.
      saved_models, model: where the exports live.
      version: pin a version; None follows the store's active-version pointer (falling back
        to the newest export when no pointer is set).
      max_step_events: events per user per `step` call (longer runs are chunked).
      behaviour_cap: Architecture A list length; with_behaviours: fill it.
    """

    def __init__(self, store, saved_models: str | Path, model: str, version: int | None = None,
                 *, max_step_events: int = 64, behaviour_cap: int = DEFAULT_BEHAVIOUR_CAP,
                 with_behaviours: bool = True, max_attempts: int = 4):
        if max_step_events < 1:
            raise ValueError(f"max_step_events must be >= 1, got {max_step_events}")
        self.store = store
        self.saved_models = Path(saved_models)
        self.model = model
        self.pinned_version = version
        self.max_step_events = max_step_events
        self.behaviour_cap = behaviour_cap
        self.with_behaviours = with_behaviours
        self.max_attempts = max_attempts
        self._steps: dict[int, LoadedSignature] = {}
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

    def step_model(self, version: int) -> LoadedSignature:
        if version not in self._steps:
            path = contract.export_dir(self.saved_models, self.model, "step", version)
            self._steps[version] = LoadedSignature(path, "step")
        return self._steps[version]

    def cold_start(self, version: int) -> np.ndarray:
        """The version's cold-start state: from the store, else the tower on no history."""
        if version not in self._cold:
            state = self.store.read_cold_start(self.model, version)
            if state is None:
                path = contract.export_dir(self.saved_models, self.model, "tower", version)
                tower = LoadedSignature(path, "tower")
                state = tower(stack_examples("tower", [tower_example([], [])]))[0]
                self.store.write_cold_start(self.model, version, state)
                _LOG.info("wrote the cold-start state of %s v%d", self.model, version)
            self._cold[version] = np.asarray(state, dtype=np.float32)
        return self._cold[version]

    # ---- the update -----------------------------------------------------------------------
    def apply(self, events: Sequence[Event], version: int | None = None) -> UpdateOutcome:
        version = self.resolve_version() if version is None else version
        outcome = UpdateOutcome(version=version)
        by_user: dict[int, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        for uid, evs in by_user.items():
            unique = {e.sort_key: e for e in evs}
            outcome.duplicates += len(evs) - len(unique)  # the same event twice in one batch
            by_user[uid] = [unique[k] for k in sorted(unique)]
        outcome.users = len(by_user)
        todo = dict(by_user)
        for attempt in range(self.max_attempts):
            if not todo:
                break
            if attempt:
                outcome.cas_retries += len(todo)
            todo = self._attempt(version, todo, outcome, first=attempt == 0)
        if todo:
            outcome.unapplied = [e for evs in todo.values() for e in evs]
            _LOG.error("gave up on %d events of %d users after %d CAS conflicts (a concurrent "
                       "writer keeps winning); they stay pending", len(outcome.unapplied),
                       len(todo), self.max_attempts)
        return outcome

    def _attempt(self, version: int, todo: dict[int, list[Event]], outcome: UpdateOutcome,
                 first: bool) -> dict[int, list[Event]]:
        users = list(todo)
        stored = self.store.read_states(self.model, version, users)
        base: dict[int, tuple[np.ndarray, int]] = {}
        fresh: dict[int, list[Event]] = {}
        stale: dict[int, tuple[list[Event], tuple[int, str]]] = {}
        for uid, current in zip(users, stored, strict=True):
            if current is None:
                state, applied, mark = self.cold_start(version), 0, NO_WATERMARK
                if first:
                    outcome.new_users += 1
            else:
                state, applied = current.state, current.events_applied
                mark = (current.last_event_time_ms, current.last_event_id)
            new = [e for e in todo[uid] if e.sort_key > mark]
            old = [e for e in todo[uid] if e.sort_key <= mark]
            if old:
                stale[uid] = (old, mark)
            if new:
                fresh[uid] = new
                base[uid] = (state, applied)
        self._classify_old(stale, outcome)
        if not fresh:
            return {}
        if self.with_behaviours:
            self.store.append_behaviours(
                (e for evs in fresh.values() for e in evs), cap=self.behaviour_cap)
        states = self._fold(version, {u: base[u][0] for u in fresh}, fresh)
        rows = []
        for uid, new in fresh.items():
            last = new[-1]
            rows.append((uid, states[uid], base[uid][1] + len(new), last.event_time_ms,
                         last.event_id))
        written = self.store.write_states(self.model, version, rows)
        retry: dict[int, list[Event]] = {}
        for (uid, *_), ok in zip(rows, written, strict=True):
            if ok:
                outcome.states_written += 1
                outcome.applied += len(fresh[uid])
            else:
                retry[uid] = fresh[uid]
        return retry

    def _classify_old(self, stale: dict[int, tuple[list[Event], tuple[int, str]]],
                      outcome: UpdateOutcome) -> None:
        """Events at or below the watermark: duplicates if already logged, else late."""
        for uid, (old, mark) in stale.items():
            seen = {e.event_id for e in self.store.read_behaviours(uid, self.behaviour_cap)} \
                if self.with_behaviours else None
            for event in old:
                if seen is None or event.event_id in seen or event.sort_key == mark:
                    outcome.duplicates += 1
                else:
                    outcome.late.append((event, (
                        f"late: event ({event.event_time_ms}, {event.event_id}) is not newer "
                        f"than the state's watermark ({mark[0]}, {mark[1]})")))

    def _fold(self, version: int, states: dict[int, np.ndarray],
              new: dict[int, list[Event]]) -> dict[int, np.ndarray]:
        """Apply `step` to every user's new events, batched across users, in chunks."""
        step = self.step_model(version)
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
