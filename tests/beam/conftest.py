"""Shared helpers of the Beam job tests: a small events file with known histories, the
reference states computed by running the exported tower directly, and a log of the commands
the Redis server executes (to check the order of writes, flips and acks)."""

from __future__ import annotations

import json
import re
import threading
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


class CommandLog:
    """The commands the Redis server executes, in the server's order (MONITOR), while the
    `with` block runs: `commands` holds each as its list of words."""

    _END = "command-log-end"

    def __init__(self, url: str):
        from uic.store import open_redis

        self.url = url
        self._monitor_client = open_redis(url, socket_timeout_s=None)
        self.commands: list[list[str]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self._monitor_client.monitor() as monitor:
            self._ready.set()  # MONITOR is acknowledged: every later command is seen
            for item in monitor.listen():
                words = item["command"].split(" ")
                if words == ["ECHO", self._END]:
                    return
                self.commands.append(words)

    def __enter__(self) -> CommandLog:
        self._thread.start()
        assert self._ready.wait(10), "MONITOR did not start"
        return self

    def __exit__(self, *exc) -> None:
        from uic.store import open_redis

        with open_redis(self.url) as client:
            client.echo(self._END)
        self._thread.join(10)
        self._monitor_client.close()

    def positions(self, name: str, key_index: int, key_pattern: str) -> list[int]:
        """Indexes of the `name` commands whose word `key_index` matches `key_pattern`."""
        pattern = re.compile(key_pattern)
        return [i for i, words in enumerate(self.commands)
                if words[0].upper() == name and len(words) > key_index
                and pattern.fullmatch(words[key_index])]


def assert_states_equal_tower(url: str, exports: Path, events: list[Event], model: str = "dien",
                              version: int = 1, namespace: str = "uic") -> None:
    """Every user's stored state equals the exported tower over the user's whole history
    (distinct events in (time, id) order): relative difference at most 1e-5, events_applied
    equal to the number of distinct events, watermark its last event."""
    from uic.store import connect

    distinct = list({(e.user_id, e.sort_key): e for e in events}.values())
    hists = histories(distinct)
    expected = tower_states(exports, model, version, hists)
    stored = connect(url, namespace=namespace).read_states(model, version, list(hists))
    for (user, hist), got in zip(hists.items(), stored, strict=True):
        assert got is not None, f"user {user} has no state"
        assert got.events_applied == len(hist), (user, got.events_applied, len(hist))
        assert got.watermark == hist[-1].sort_key, user
        want = expected[user]
        rel = float(np.max(np.abs(got.state - want)) / max(float(np.max(np.abs(want))), 1e-12))
        assert rel <= 1e-5, (user, rel)
