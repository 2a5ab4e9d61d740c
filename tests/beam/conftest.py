"""Shared helpers of the Beam job tests: a small events file with known histories, and the
reference states computed by running the exported tower directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from beam_jobs.produce import synthetic_payloads
from uic.events import Event

N_USERS = 12
N_EVENTS = 160
MALFORMED = [
    '{"user_id": 3, "item_id": 5}',  # missing fields
    "this is not json",
    json.dumps({"user_id": -1, "item_id": 1, "category_id": 1, "behavior_type": "pv",
                "event_time_ms": 5, "event_id": "neg"}),
]


def make_events(seed: int = 7, n: int = N_EVENTS, users: int = N_USERS) -> list[Event]:
    """Valid events with some same-time ties (ordered by event id) and a few long users."""
    events = [Event.from_json(p) for p in
              synthetic_payloads(n, users=users, items=300, categories=20, seed=seed,
                                 start_ms=1_500_000_000_000)]
    # ties: give pairs of events the same time, so the (time, event id) order matters
    out = []
    for i, e in enumerate(events):
        t = e.event_time_ms - (i % 2)
        out.append(Event(e.user_id, e.item_id, e.category_id, e.behavior_type, t, e.event_id))
    return out


def histories(events: list[Event], cutoff_ms: int | None = None) -> dict[int, list[Event]]:
    by_user: dict[int, list[Event]] = {}
    for e in events:
        if cutoff_ms is None or e.event_time_ms <= cutoff_ms:
            by_user.setdefault(e.user_id, []).append(e)
    return {u: sorted(evs, key=lambda e: e.sort_key) for u, evs in by_user.items()}


def write_jsonl(path: Path, events: list[Event], malformed=()) -> Path:
    lines = [e.to_json() for e in events]
    for i, bad in enumerate(malformed):
        lines.insert(3 + 7 * i, bad)
    path.write_text("\n".join(lines) + "\n")
    return path


_TOWERS: dict = {}


def tower_states(exports: Path, model: str, version: int,
                 hists: dict[int, list[Event]]) -> dict[int, np.ndarray]:
    """The exported tower run directly (one user per call: no batching, no padding)."""
    from beam_jobs.model_handler import LoadedSignature, stack_examples, tower_example
    from uic import contract

    key = (str(exports), model, version)
    if key not in _TOWERS:
        _TOWERS[key] = LoadedSignature(contract.export_dir(exports, model, "tower", version),
                                       "tower")
    tower = _TOWERS[key]
    return {u: tower(stack_examples("tower", [tower_example([e.item_id for e in h],
                                                            [e.category_id for e in h])]))[0]
            for u, h in hists.items()}


@pytest.fixture(scope="session")
def events_data(tmp_path_factory):
    """(path to events.jsonl with 3 malformed lines, the valid events)."""
    events = make_events()
    path = write_jsonl(tmp_path_factory.mktemp("beam_events") / "events.jsonl", events,
                       MALFORMED)
    return path, events
