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
"""Largest raw id or time: ids are int64 in the logs, the SavedModels and the store."""
MAX_EVENT_ID_LEN = 128
MAX_EVENT_JSON_BYTES = 4096
"""An event's JSON is a few hundred bytes; anything longer is refused before parsing."""
_MAX_INT_DIGITS = 20  # int64 has at most 19 digits (plus a sign)


class InvalidEvent(ValueError):
    """An event failed validation. `field` names the offending field (or None for the whole
    record) and `reason` says what was wrong; `str(err)` combines both for dead-letter output."""

    def __init__(self, field: str | None, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def check_id(name: str, value: Any) -> int:
    """`value` if it is an integer in [0, INT64_MAX] (ids and event times); InvalidEvent
    naming `name` otherwise. A bool is refused: "true" as an id is always a mistake. The one
    range check for raw ids: the client and the readers use it too."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(name, f"must be an integer in [0, 2^63-1], got "
                                 f"{type(value).__name__} {value!r}")
    if not 0 <= value <= INT64_MAX:
        raise InvalidEvent(name, f"must be in [0, 2^63-1], got {value}")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise InvalidEvent(None, f"integer of {len(text)} digits is out of the int64 range")
    return int(text)


def _no_constant(name: str):
    raise InvalidEvent(None, f"{name} is not allowed in an event")


def load_json_record(text: str | bytes | bytearray) -> Any:
    """Parse one record's JSON with bounds: at most MAX_EVENT_JSON_BYTES, integers of at
    most 20 digits, no NaN/Infinity, no nesting deep enough to exhaust the stack. Every
    failure is an InvalidEvent, so one hostile entry can be dead-lettered and the stream
    job goes on."""
    if not isinstance(text, str | bytes | bytearray | memoryview):
        raise InvalidEvent(None, f"expected JSON text, got {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > MAX_EVENT_JSON_BYTES:
        raise InvalidEvent(None, f"record is {size} bytes; at most {MAX_EVENT_JSON_BYTES} allowed")
    if size == 0:
        raise InvalidEvent(None, "empty record")
    try:
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8")
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except InvalidEvent:
        raise
    except UnicodeDecodeError as err:
        raise InvalidEvent(None, f"not valid UTF-8: {err}") from None
    except RecursionError:
        raise InvalidEvent(None, "JSON nested too deeply") from None
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise InvalidEvent(None, f"not valid JSON: {err}") from None


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
            check_id(name, getattr(self, name))
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
        # Built directly: dataclasses.asdict deep-copies and costs ~30 us per event.
        return {"user_id": self.user_id, "item_id": self.item_id,
                "category_id": self.category_id, "behavior_type": self.behavior_type,
                "event_time_ms": self.event_time_ms, "event_id": self.event_id}

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
        return cls.from_dict(load_json_record(text))


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
        for name in _INT_FIELDS:
            check_id(name, getattr(self, name))
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise InvalidEvent("label", f"must be 0 or 1, got {self.label!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Impression:
        record = load_json_record(text)
        if not isinstance(record, dict):
            raise InvalidEvent(None, f"impression must be a JSON object, got {type(record).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [f for f in fields if f not in record]
        if missing:
            raise InvalidEvent(missing[0], "missing")
        return cls(**{f: record[f] for f in fields})
