"""Reader for the public Taobao user-behaviour log (`UserBehavior.csv`, Alibaba Tianchi).

Format: one event per line, no header, comma separated::

    user_id,item_id,category_id,behavior_type,timestamp

with ``behavior_type`` one of ``pv``, ``cart``, ``fav``, ``buy`` and ``timestamp`` in Unix
seconds. Each line becomes a `uic.events.Event` with ``event_time_ms = timestamp * 1000`` and a
deterministic ``event_id`` ``tb-<line number, 10 digits>-<user>-<item>-<behavior>-<timestamp>``:
re-reading the same file gives the same ids (so replays stay idempotent), and events of one
user in the same second are ordered as they appear in the file.

Malformed lines (wrong field count, non-integer ids, negative values, unknown behaviour type)
are not raised: `read_taobao_with_errors` yields them as ``(None, reason, line_no)`` so a
caller can count or dead-letter them and carry on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from uic.events import Event, InvalidEvent

FIELDS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")


def parse_taobao_line(line: str, line_no: int) -> Event:
    """One CSV line -> Event; raises InvalidEvent naming the bad field."""
    parts = line.rstrip("\r\n").split(",")
    if len(parts) != len(FIELDS):
        raise InvalidEvent(None, f"expected {len(FIELDS)} comma-separated fields "
                                 f"({','.join(FIELDS)}), got {len(parts)}")
    values = {}
    for name, text in zip(FIELDS, parts, strict=True):
        text = text.strip()
        if name == "behavior_type":
            values[name] = text
            continue
        try:
            values[name] = int(text)
        except ValueError:
            raise InvalidEvent(name, f"must be an integer, got {text!r}") from None
    ts = values["timestamp"]
    if ts < 0:
        raise InvalidEvent("timestamp", f"must be >= 0 (Unix seconds), got {ts}")
    return Event(
        user_id=values["user_id"],
        item_id=values["item_id"],
        category_id=values["category_id"],
        behavior_type=values["behavior_type"],
        event_time_ms=ts * 1000,
        event_id=(f"tb-{line_no:010d}-{values['user_id']}-{values['item_id']}-"
                  f"{values['behavior_type']}-{ts}"),
    )


def read_taobao_with_errors(path) -> Iterator[tuple[Event | None, str | None, int]]:
    """(event, None, line_no) for good lines, (None, reason, line_no) for bad ones; blank
    lines are skipped. Line numbers start at 1."""
    with Path(path).open("r", encoding="utf-8", errors="replace", newline="") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield parse_taobao_line(line, line_no), None, line_no
            except InvalidEvent as err:
                yield None, str(err), line_no
