"""The behaviour event: one user action on one item, as it travels through the system.

This module is the single definition of the event schema. The stream job, the backfill job,
the producer CLI, the data readers and the tests all go through `Event.from_json` /
`Event.from_dict` and `Event.to_json`, so a malformed event is rejected the same way
everywhere, with an error that names the bad field and why.

JSON wire form (one object, UTF-8)::

    {"user_id": 42, "item_id": 1001, "category_id": 7, "behavior_type": "pv",
     "event_time_ms": 1511544070000, "event_id": "e-42-1"}

* ``user_id``, ``item_id``, ``category_id``: raw int64 ids as they appear in the logs
  (non-negative). Vocabulary lookup happens inside the SavedModels, never here.
* ``behavior_type``: one of ``pv`` (page view / click), ``cart``, ``fav``, ``buy``.
* ``event_time_ms``: event time, milliseconds since the Unix epoch (int, >= 0).
* ``event_id``: non-empty string (<= 128 chars), unique per event; used to make replays
  idempotent and to break ties between events with the same time.

A user's history is ordered by ``(event_time_ms, event_id)``: see `Event.sort_key`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

BEHAVIOR_TYPES: tuple[str, ...] = ("pv", "cart", "fav", "buy")
FIELDS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "category_id",
    "behavior_type",
    "event_time_ms",
    "event_id",
)
_INT_FIELDS = ("user_id", "item_id", "category_id", "event_time_ms")
INT64_MAX = 2**63 - 1
MAX_EVENT_ID_LEN = 128


class InvalidEvent(ValueError):
    """An event failed validation. `field` names the offending field (or None for the whole
    record) and `reason` says what was wrong; `str(err)` combines both for dead-letter output."""

    def __init__(self, field: str | None, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    user_id: int
    item_id: int
    category_id: int
    behavior_type: str
    event_time_ms: int
    event_id: str

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            # bool is an int subclass; "true" as an id is always a mistake.
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidEvent(name, f"must be an integer, got {type(value).__name__} {value!r}")
            if value < 0 or value > INT64_MAX:
                raise InvalidEvent(name, f"must be in [0, 2^63-1], got {value}")
        if self.behavior_type not in BEHAVIOR_TYPES:
            raise InvalidEvent(
                "behavior_type", f"must be one of {list(BEHAVIOR_TYPES)}, got {self.behavior_type!r}"
            )
        if not isinstance(self.event_id, str) or not self.event_id:
            raise InvalidEvent("event_id", f"must be a non-empty string, got {self.event_id!r}")
        if len(self.event_id) > MAX_EVENT_ID_LEN:
            raise InvalidEvent("event_id", f"must be at most {MAX_EVENT_ID_LEN} characters")

    @property
    def sort_key(self) -> tuple[int, str]:
        """Order of events within one user's history: time, then event id."""
        return (self.event_time_ms, self.event_id)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Event:
        if not isinstance(record, Mapping):
            raise InvalidEvent(None, f"event must be a JSON object, got {type(record).__name__}")
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise InvalidEvent(missing[0], "missing")
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            raise InvalidEvent(unknown[0], f"unknown field (allowed: {list(FIELDS)})")
        return cls(**{f: record[f] for f in FIELDS})

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidEvent(None, f"not valid JSON: {err}") from None
        return cls.from_dict(record)


@dataclasses.dataclass(frozen=True, slots=True)
class Impression:
    """A labelled ad impression: the candidate shown to a user at a time, and whether it was
    clicked. Training pairs it with the user's events strictly before `event_time_ms`.

    JSON form: {"user_id", "item_id", "category_id", "event_time_ms", "label"} with label 0/1.
    """

    user_id: int
    item_id: int
    category_id: int
    event_time_ms: int
    label: int

    def __post_init__(self) -> None:
        for name in ("user_id", "item_id", "category_id", "event_time_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
                raise InvalidEvent(name, f"must be an integer in [0, 2^63-1], got {value!r}")
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise InvalidEvent("label", f"must be 0 or 1, got {self.label!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Impression:
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidEvent(None, f"not valid JSON: {err}") from None
        if not isinstance(record, dict):
            raise InvalidEvent(None, f"impression must be a JSON object, got {type(record).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [f for f in fields if f not in record]
        if missing:
            raise InvalidEvent(missing[0], "missing")
        return cls(**{f: record[f] for f in fields})
