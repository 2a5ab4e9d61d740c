"""Behaviour data: readers for event and impression files, the synthetic generator
(`tf_models.data.synthetic`) and the Taobao `UserBehavior.csv` reader (`uic.taobao`).

* `read_events(path)` yields `uic.events.Event`s from a JSONL file (one `Event.to_json` per
  line; ``.gz`` allowed) or a Taobao CSV (path ending in ``.csv`` / ``.csv.gz``). Malformed
  lines are skipped, counted in the optional `stats` dict and summarised in one warning.
* `read_events_with_errors(path)` yields ``(Event | None, error | None, line_no)`` for callers
  that dead-letter bad lines.
* `read_impressions(path)` yields `uic.events.Impression`s from a JSONL file (malformed lines
  skipped and counted the same way).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from pathlib import Path

from uic.events import Event, Impression, InvalidEvent
from uic.taobao import read_taobao_with_errors

__all__ = ["read_events", "read_events_with_errors", "read_impressions"]

log = logging.getLogger(__name__)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def _check_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (expected events JSONL or a Taobao UserBehavior.csv; "
            "generate demo data with `python -m tf_models.data.synthetic --out DIR`)"
        )
    return path


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def _read_jsonl(path: Path, parse) -> Iterator[tuple[object | None, str | None, int]]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield parse(line), None, line_no
            except InvalidEvent as err:
                yield None, str(err), line_no
            except (TypeError, ValueError) as err:  # e.g. unexpected extra keys in an impression
                yield None, f"invalid record: {err}", line_no


def read_events_with_errors(path) -> Iterator[tuple[Event | None, str | None, int]]:
    """Every non-blank line as (event, None, line_no) or (None, reason, line_no)."""
    path = _check_file(path)
    if _is_csv(path):
        if path.suffix == ".gz":
            raise ValueError(f"{path}: gzipped Taobao CSV is not supported; gunzip it first")
        return read_taobao_with_errors(path)
    return _read_jsonl(path, Event.from_json)  # type: ignore[return-value]


def _skip_bad(path, rows, stats: dict | None, kind: str):
    good = bad = 0
    first: list[str] = []
    for record, error, line_no in rows:
        if record is None:
            bad += 1
            if len(first) < 3:
                first.append(f"line {line_no}: {error}")
            continue
        good += 1
        yield record
    if stats is not None:
        stats.update(read=good, skipped=bad)
    if bad:
        log.warning("%s: skipped %d malformed %s line(s), e.g. %s", path, bad, kind, "; ".join(first))


def read_events(path, stats: dict | None = None) -> Iterator[Event]:
    """Valid events of a JSONL or Taobao CSV file, in file order. If given, `stats` receives
    ``read`` and ``skipped`` counts when the iteration finishes."""
    return _skip_bad(path, read_events_with_errors(path), stats, "event")


def read_impressions(path, stats: dict | None = None) -> Iterator[Impression]:
    """Valid impressions of a JSONL file, in file order (malformed lines skipped, counted)."""
    p = _check_file(path)
    return _skip_bad(path, _read_jsonl(p, Impression.from_json), stats, "impression")
