"""Candidate ids: checking the arrays `Scorer.score` takes, padding them to the request's
[1, N] shape, and reading them for the CLI (`--items 1,2,3 --cates 7,7,9` or a JSONL/CSV
file).

Ids are raw int64 ids as they appear in the logs, in [0, `uic.events.INT64_MAX`]; the
SavedModels map them to their vocabularies.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from client.errors import InvalidRequest
from uic.contract import padded_candidate_count
from uic.events import INT64_MAX, InvalidEvent, check_id

MAX_CANDIDATES = 10_000
"""Default limit of candidates per request: the model server's own default limit
(--max_request_candidates), checked here so an oversized request fails before it is sent."""


def check_user(user_id) -> int:
    """`user_id` as an int in [0, INT64_MAX] (numpy integers accepted), else InvalidRequest."""
    if isinstance(user_id, np.integer):
        user_id = int(user_id)
    try:
        return check_id("user_id", user_id)
    except InvalidEvent as err:
        raise InvalidRequest(f"user_id {err.reason}") from None


def candidate_arrays(item_ids, cate_ids=None, max_candidates: int = MAX_CANDIDATES
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(items, cates) as int64 [N] after checking them (at most `max_candidates`);
    `cate_ids=None` gives category 0 (unknown) to every item."""
    items = _id_array(item_ids, "item_ids")
    if items.size > max_candidates:
        raise InvalidRequest(f"{items.size} candidates in one request; at most {max_candidates} "
                             "are allowed (the model server refuses more, see its "
                             "--max_request_candidates): split them into several requests")
    if cate_ids is None:
        return items, np.zeros_like(items)
    cates = _id_array(cate_ids, "cate_ids")
    if cates.shape != items.shape:
        raise InvalidRequest(f"got {items.size} item_ids but {cates.size} cate_ids: "
                             "give one category per candidate")
    return items, cates


def padded_candidates(items: np.ndarray, cates: np.ndarray) -> dict[str, np.ndarray]:
    """The candidate inputs of one request: [1, N'] with N' = `padded_candidate_count(N)`
    (8, 16, 32, 64, 100, then multiples of 100), the extra columns repeating the first
    candidate. A few fixed shapes keep the server's padding across a batch small and the
    exported heads' XLA blocks full; the caller keeps the first N scores."""
    extra = padded_candidate_count(items.size) - items.size
    return {"cand_item_ids": np.pad(items, (0, extra), constant_values=items[0])[None],
            "cand_cate_ids": np.pad(cates, (0, extra), constant_values=cates[0])[None]}


def _id_array(values, what: str) -> np.ndarray:
    """A flat, non-empty integer array within the id range (checked vectorised)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InvalidRequest(f"{what} must be a flat list of integer ids, got shape "
                             f"{list(array.shape)}")
    if array.size == 0:
        raise InvalidRequest(f"{what} is empty: pass at least one candidate")
    if array.dtype.kind not in "iu":
        raise InvalidRequest(f"{what} must hold integer ids, got {array.dtype} values "
                             f"such as {array[0]!r}")
    if (array.dtype.kind == "u" and array.max() > INT64_MAX) or array.min() < 0:
        raise InvalidRequest(f"{what} must be ids in [0, 2^63-1]; got {array.min()}..{array.max()}")
    return array.astype(np.int64, copy=False)


def parse_id_list(text: str, what: str) -> np.ndarray:
    """'1,2,3' -> int64 array; names the bad element otherwise."""
    if not text.strip():
        raise InvalidRequest(f"{what} is empty: pass comma-separated integer ids, e.g. 1,2,3")
    ids = []
    for i, part in enumerate(text.split(","), 1):
        part = part.strip()
        if not part.isdecimal():
            raise InvalidRequest(f"{what}: element {i} is {part!r}, expected a "
                                 "non-negative integer id (comma-separated, e.g. 1,2,3)")
        if int(part) > INT64_MAX:
            raise InvalidRequest(f"{what}: element {i} is {part}; ids must be below 2^63")
        ids.append(int(part))
    return np.asarray(ids, dtype=np.int64)


def _file_id(value, where: str, field: str) -> int:
    """One id of a candidates file: an integer or its decimal string."""
    if isinstance(value, str):
        if not value.strip().isdecimal():
            raise InvalidRequest(f"{where}: {field} must be a non-negative integer, got {value!r}")
        value = int(value)
    try:
        return check_id(field, value)
    except InvalidEvent as err:
        raise InvalidRequest(f"{where}: {field} {err.reason}") from None


def read_candidates(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids, cate_ids) from a file of candidates.

    `.jsonl`/`.json`/`.ndjson`: one object per line, `{"item_id": 1, "category_id": 7}`.
    Anything else is CSV: `item_id,category_id` per row, optional header row with those
    names; a row with only an item id gets category 0 (unknown). Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"candidates file {path} does not exist")
    reader = _jsonl_rows if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else _csv_rows
    items: list[int] = []
    cates: list[int] = []
    with path.open(newline="") as fh:
        for where, item, cate in reader(fh, path):
            items.append(_file_id(item, where, "item_id"))
            cates.append(_file_id(cate, where, "category_id"))
    if not items:
        raise InvalidRequest(f"candidates file {path} holds no candidates")
    return np.asarray(items, np.int64), np.asarray(cates, np.int64)


def _jsonl_rows(fh, path: Path):
    """(where, item_id, category_id) per non-blank JSONL line."""
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
        yield where, row["item_id"], row.get("category_id", 0)


def _csv_rows(fh, path: Path):
    """(where, item_id, category_id) per non-blank CSV row, after the optional header."""
    for line_no, row in enumerate(csv.reader(fh), 1):
        row = [c.strip() for c in row]
        if not any(row):
            continue
        if line_no == 1 and not row[0].isdecimal():
            if row[0] != "item_id" or (len(row) > 1 and row[1] != "category_id"):
                raise InvalidRequest(f"{path}:1: header must be item_id,category_id, "
                                     f"got {','.join(row)!r}")
            continue
        where = f"{path}:{line_no}"
        if len(row) > 2:
            raise InvalidRequest(f"{where}: expected item_id,category_id, got "
                                 f"{len(row)} columns")
        yield where, row[0], row[1] if len(row) > 1 else "0"
