"""Byte formats of what the interest store keeps in Redis: the state value and the
behaviour-log member. Pure functions, no Redis; `uic.store` and its Lua scripts use the
offsets defined here, so the two cannot drift apart.

State value (one Redis string per (model, version, user)): a 36-byte little-endian header,
the last event id, then the raw floats::

    offset size type   field
    0      3    bytes  magic b"UIS"
    3      1    u8     format version (1)
    4      1    u8     dtype code: 1 = fp32, 2 = fp16
    5      1    u8     reserved (0)
    6      2    u16    n = byte length of last_event_id (UTF-8)
    8      4    u32    S = number of floats in the state
    12     8    i64    events_applied
    20     8    i64    last_event_time_ms
    28     8    i64    write_time_ms
    36     n    bytes  last_event_id (UTF-8)
    36+n   4S|2S f32/f16 state, little-endian

Behaviour member (one member of a user's behaviour ZSET, scored by ``event_time_ms``):
``event_id`` UTF-8, a 0 byte, then ``<q item_id><q category_id><B behaviour code>`` (17
bytes). Same-score ties sort by member, i.e. by event id, so the ZSET order is the history
order ``(event_time_ms, event_id)``; adding the same event twice is a no-op.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from uic.events import BEHAVIOR_TYPES, INT64_MAX, Event

MAGIC = b"UIS"
FORMAT_VERSION = 1
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "fp32": (1, np.dtype("<f4")),
    "fp16": (2, np.dtype("<f2")),
}
_CODE_TO_DTYPE = {code: dt for code, dt in DTYPES.values()}
HEADER = struct.Struct("<3sBBBHIqqq")
HEADER_SIZE = HEADER.size  # 36
ID_LEN_OFFSET = 6  # u16 byte length of last_event_id
EVENTS_APPLIED_OFFSET = 12  # i64
LAST_EVENT_TIME_OFFSET = 20  # i64
MAX_EVENTS_APPLIED = 2**53 - 1  # Lua numbers are doubles: exact up to 2^53
FP16_MAX = 65504.0
BEHAVIOUR_SUFFIX = struct.Struct("<qqB")  # item_id, category_id, behaviour code
BEHAVIOUR_DTYPE = np.dtype([("item", "<i8"), ("cate", "<i8"), ("type", "u1")])

CAS_FIELDS = struct.Struct("<qq")  # events_applied, last_event_time_ms: what a CAS compares

assert struct.calcsize("<3sBBB") == ID_LEN_OFFSET
assert struct.calcsize("<3sBBBHI") == EVENTS_APPLIED_OFFSET
assert EVENTS_APPLIED_OFFSET + 8 == LAST_EVENT_TIME_OFFSET


class StoreError(Exception):
    """The store could not do what was asked (connection, authentication, permissions, bad
    arguments); the message says what and what to do."""


class CodecError(StoreError, ValueError):
    """A value cannot be encoded (bad argument) or decoded (corrupt bytes)."""


class CorruptValue(CodecError):
    """A stored value is not in the expected format. `key` names the Redis key."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(
            f"corrupt value at Redis key {key!r}: {reason} "
            "(delete the key or rewrite it from the backfill job)"
        )


@dataclass(frozen=True, eq=False)
class StoredState:
    state: np.ndarray  # float32 [S] (fp16 values are widened on read)
    events_applied: int  # how many events the state has folded in
    last_event_time_ms: int  # watermark (time, id) of the newest event folded in
    last_event_id: str  # "" when none
    write_time_ms: int

    @property
    def watermark(self) -> tuple[int, str]:
        return (self.last_event_time_ms, self.last_event_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredState):
            return NotImplemented
        return (
            self.events_applied == other.events_applied
            and self.last_event_time_ms == other.last_event_time_ms
            and self.last_event_id == other.last_event_id
            and self.write_time_ms == other.write_time_ms
            and np.array_equal(self.state, other.state)
        )

    __hash__ = None  # type: ignore[assignment]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_int(name: str, value, lo: int = 0, hi: int = INT64_MAX) -> int:
    """`value` as an int in [lo, hi]; CodecError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CodecError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise CodecError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def cas_header(events_applied: int, last_event_time_ms: int, last_event_id: str) -> bytes:
    """The bytes of a state value that a compare-and-set compares: events_applied and
    last_event_time_ms (offsets EVENTS_APPLIED_OFFSET .. LAST_EVENT_TIME_OFFSET + 8) followed
    by the last_event_id bytes (from HEADER_SIZE). Equal headers mean the same events folded."""
    return CAS_FIELDS.pack(events_applied, last_event_time_ms) + last_event_id.encode("utf-8")


def encode_state(
    state,
    *,
    events_applied: int,
    last_event_time_ms: int,
    last_event_id: str = "",
    write_time_ms: int | None = None,
    dtype: str = "fp32",
) -> bytes:
    """Pack a state and its metadata into the stored byte format (see module docstring)."""
    if dtype not in DTYPES:
        raise CodecError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    code, np_dtype = DTYPES[dtype]
    arr = np.asarray(state)
    if arr.ndim != 1 or arr.size == 0:
        raise CodecError(f"state must be a non-empty 1-D float vector, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise CodecError(f"state must hold floats, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise CodecError("state contains NaN or infinity; refusing to store it")
    if dtype == "fp16" and np.max(np.abs(arr)) > FP16_MAX:
        raise CodecError(
            f"state has values beyond the fp16 range (|x| <= {FP16_MAX}); store it as fp32"
        )
    events_applied = check_int("events_applied", events_applied, 0, MAX_EVENTS_APPLIED)
    last_event_time_ms = check_int("last_event_time_ms", last_event_time_ms)
    write_time_ms = now_ms() if write_time_ms is None else check_int("write_time_ms", write_time_ms)
    if not isinstance(last_event_id, str):
        raise CodecError(f"last_event_id must be a string, got {type(last_event_id).__name__}")
    id_bytes = last_event_id.encode("utf-8")
    if len(id_bytes) > 0xFFFF:
        raise CodecError(f"last_event_id is {len(id_bytes)} bytes; at most 65535 allowed")
    header = HEADER.pack(
        MAGIC, FORMAT_VERSION, code, 0, len(id_bytes), arr.size,
        events_applied, last_event_time_ms, write_time_ms,
    )
    return header + id_bytes + arr.astype(np_dtype, copy=False).tobytes()


def decode_state(value: bytes, key: str = "<value>") -> StoredState:
    """Unpack a stored value; raises CorruptValue naming `key` when it is not well formed."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise CorruptValue(key, f"expected bytes, got {type(value).__name__} "
                                "(is the redis client using decode_responses=True?)")
    value = bytes(value)
    if len(value) < HEADER_SIZE:
        raise CorruptValue(key, f"{len(value)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, fmt, code, _reserved, id_len, size, applied, last_t, write_t = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise CorruptValue(key, f"bad magic {magic!r}, expected {MAGIC!r}")
    if fmt != FORMAT_VERSION:
        raise CorruptValue(key, f"format version {fmt} is not supported (expected {FORMAT_VERSION})")
    if code not in _CODE_TO_DTYPE:
        raise CorruptValue(key, f"unknown dtype code {code}")
    # The same ranges encode_state enforces: a value it could not have written is corrupt.
    if _reserved != 0 or size == 0 or not 0 <= applied <= MAX_EVENTS_APPLIED \
            or last_t < 0 or write_t < 0:
        raise CorruptValue(key, f"header out of range (reserved {_reserved}, size {size}, "
                                f"events_applied {applied}, last_event_time_ms {last_t}, "
                                f"write_time_ms {write_t})")
    np_dtype = _CODE_TO_DTYPE[code]
    expected = HEADER_SIZE + id_len + size * np_dtype.itemsize
    if len(value) != expected:
        raise CorruptValue(key, f"length {len(value)} bytes, header implies {expected}")
    try:
        last_id = value[HEADER_SIZE:HEADER_SIZE + id_len].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptValue(key, "last_event_id is not valid UTF-8") from None
    state = np.frombuffer(value, dtype=np_dtype, offset=HEADER_SIZE + id_len, count=size)
    if not np.all(np.isfinite(state)):
        raise CorruptValue(key, "state contains NaN or infinity")
    return StoredState(
        state=state.astype(np.float32),  # a fresh writable array, widened from fp16
        events_applied=applied,
        last_event_time_ms=last_t,
        last_event_id=last_id,
        write_time_ms=write_t,
    )


def encode_behaviour(event: Event) -> bytes:
    """The behaviour-ZSET member of one event (its score is `event.event_time_ms`)."""
    return (
        event.event_id.encode("utf-8") + b"\x00"
        + BEHAVIOUR_SUFFIX.pack(event.item_id, event.category_id,
                                BEHAVIOR_TYPES.index(event.behavior_type))
    )


def decode_behaviour(user_id: int, member: bytes, score: float) -> Event:
    n = BEHAVIOUR_SUFFIX.size
    item, cate, code = BEHAVIOUR_SUFFIX.unpack(member[-n:])
    return Event(user_id=int(user_id), item_id=item, category_id=cate,
                 behavior_type=BEHAVIOR_TYPES[code], event_time_ms=int(score),
                 event_id=member[:-n - 1].decode("utf-8", errors="replace"))


def check_behaviour_members(key: str, members: Sequence[bytes]) -> None:
    """CorruptValue naming `key` unless every member has the behaviour-member shape."""
    n = BEHAVIOUR_SUFFIX.size
    for m in members:
        if len(m) < n + 2 or m[-n - 1] != 0 or m[-1] >= len(BEHAVIOR_TYPES):
            raise CorruptValue(key, f"behaviour member {m[:40]!r} is not in the expected format")


def behaviour_arrays(rows: Sequence[Sequence[bytes]], length: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item_ids int64 [B, L], cate_ids int64 [B, L], lens int32 [B]) from each row's
    members (oldest first), right-padded with 0."""
    b = len(rows)
    items = np.zeros((b, length), np.int64)
    cates = np.zeros((b, length), np.int64)
    lens = np.zeros((b,), np.int32)
    n = BEHAVIOUR_SUFFIX.size
    for row, members in enumerate(rows):
        if not members:
            continue
        packed = np.frombuffer(b"".join(m[-n:] for m in members), dtype=BEHAVIOUR_DTYPE)
        k = len(packed)
        items[row, :k] = packed["item"]
        cates[row, :k] = packed["cate"]
        lens[row] = k
    return items, cates, lens
