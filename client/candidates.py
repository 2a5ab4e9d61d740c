"""Reading candidate lists for the CLI: `--items 1,2,3 --cates 7,7,9` or a JSONL/CSV file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from client.errors import InvalidRequest


def parse_id_list(text: str, what: str) -> np.ndarray:
    """'1,2,3' -> int64 array; names the bad element otherwise."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip():
        raise InvalidRequest(f"{what} is empty: pass comma-separated integer ids, e.g. 1,2,3")
    ids = []
    for i, part in enumerate(parts):
        if not part.isdigit():
            raise InvalidRequest(f"{what}: element {i + 1} is {part!r}, expected a "
                                 "non-negative integer id (comma-separated, e.g. 1,2,3)")
        ids.append(int(part))
    try:
        return np.asarray(ids, dtype=np.int64)
    except OverflowError:
        raise InvalidRequest(f"{what}: ids must be below 2^63") from None


def _as_id(value, where: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{where}: {field} must be an integer, got {value!r}")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise InvalidRequest(f"{where}: {field} must be a non-negative integer, got {value!r}")
        value = int(value)
    if not 0 <= value < 2**63:
        raise InvalidRequest(f"{where}: {field} must be in [0, 2^63-1], got {value}")
    return value


def read_candidates(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids, cate_ids) from a file of candidates.

    `.jsonl`/`.json`: one object per line, `{"item_id": 1, "category_id": 7}`.
    Anything else is CSV: `item_id,category_id` per row, optional header row with those
    names; a row with only an item id gets category 0 (unknown). Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"candidates file {path} does not exist")
    items: list[int] = []
    cates: list[int] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with path.open() as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    row = json.loads(line)
                except ValueError as err:
                    raise InvalidRequest(f"{where}: not valid JSON ({err})") from None
                if not isinstance(row, dict) or "item_id" not in row:
                    raise InvalidRequest(f"{where}: expected an object with item_id and "
                                         f"category_id, got {line.strip()[:80]!r}")
                items.append(_as_id(row["item_id"], where, "item_id"))
                cates.append(_as_id(row.get("category_id", 0), where, "category_id"))
    else:
        with path.open(newline="") as fh:
            for line_no, row in enumerate(csv.reader(fh), 1):
                row = [c.strip() for c in row]
                if not row or not any(row):
                    continue
                if line_no == 1 and not row[0].isdigit():
                    if row[0] != "item_id" or (len(row) > 1 and row[1] != "category_id"):
                        raise InvalidRequest(f"{path}:1: header must be item_id,category_id, "
                                             f"got {','.join(row)!r}")
                    continue
                where = f"{path}:{line_no}"
                if len(row) > 2:
                    raise InvalidRequest(f"{where}: expected item_id,category_id, got "
                                         f"{len(row)} columns")
                items.append(_as_id(row[0], where, "item_id"))
                cates.append(_as_id(row[1] if len(row) > 1 else "0", where, "category_id"))
    if not items:
        raise InvalidRequest(f"candidates file {path} holds no candidates")
    return np.asarray(items, np.int64), np.asarray(cates, np.int64)
