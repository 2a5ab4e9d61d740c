"""The interest store: per-user interest states and behaviour lists in Redis (DESIGN.md §5).

This is the one place that knows the Redis key layout and the state value format; the Beam
jobs, the client, the demo and the benchmarks all go through `InterestStore`.

Key layout (every per-user key carries the hash tag ``{u:<user_id>}``, so all keys of one
user sit on one Redis Cluster slot and a Lua script may touch them together)::

    <ns>:{u:<uid>}:s:<model>:<version>   state value (bytes, format below)
    <ns>:{u:<uid>}:b                      behaviour ZSET (Architecture A), capped
    <ns>:m:<model>:active                 active version of <model> (decimal string)
    <ns>:m:<model>:<version>:cold         cold-start state of (model, version)

State value: a 36-byte little-endian header, the last event id, then the raw floats::

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

Writes are compare-and-set inside Redis (one Lua script): a state replaces the stored one only
when its `events_applied` is greater, so replays and racing writers can only move a user's
state forward. Reads of many users are one MGET (one round trip; on a cluster one pipelined
MGET per node, sent to all nodes before any reply is read).

Behaviour ZSET members: ``event_id`` UTF-8, a 0 byte, then ``<q item_id><q category_id><B
behaviour code>`` (17 bytes), scored by ``event_time_ms``. Same score ties sort by member, i.e.
by event id, so the ZSET order is the history order ``(event_time_ms, event_id)``; adding the
same event twice is a no-op (idempotent replay).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from uic.events import BEHAVIOR_TYPES, Event

MAGIC = b"UIS"
FORMAT_VERSION = 1
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "fp32": (1, np.dtype("<f4")),
    "fp16": (2, np.dtype("<f2")),
}
_CODE_TO_DTYPE = {code: dt for code, dt in DTYPES.values()}
HEADER = struct.Struct("<3sBBBHIqqq")
HEADER_SIZE = HEADER.size  # 36
EVENTS_APPLIED_OFFSET = 12
MAX_EVENTS_APPLIED = 2**53 - 1  # Lua numbers are doubles: exact up to 2^53
FP16_MAX = 65504.0
_BEHAVIOUR_SUFFIX = struct.Struct("<qqB")  # item_id, category_id, behaviour code
_BEHAVIOUR_DTYPE = np.dtype([("item", "<i8"), ("cate", "<i8"), ("type", "u1")])
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_READ_CHUNK = 5000

# KEYS[1] state key. ARGV[1] new value, ARGV[2] its events_applied, ARGV[3] TTL seconds (0 none).
# Returns 1 when written, 0 when the stored state has applied as many events or more.
CAS_SCRIPT = """
local old = redis.call('GET', KEYS[1])
if old then
  if string.len(old) < 36 or string.sub(old, 1, 3) ~= 'UIS' then
    return redis.error_reply('CORRUPT stored state at key ' .. KEYS[1] .. ' is not a UIS value')
  end
  local applied = struct.unpack('<i8', old, 13)
  if applied >= tonumber(ARGV[2]) then
    return 0
  end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""
CAS_SHA = hashlib.sha1(CAS_SCRIPT.encode()).hexdigest()


class StoreError(Exception):
    """The store could not do what was asked (connection, authentication, permissions, bad
    arguments); the message says what and what to do."""


class CorruptValue(StoreError):
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


# ---------------------------------------------------------------------------------------
# codec
# ---------------------------------------------------------------------------------------
def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_int(name: str, value, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise StoreError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise StoreError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


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
        raise StoreError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    code, np_dtype = DTYPES[dtype]
    arr = np.asarray(state)
    if arr.ndim != 1 or arr.size == 0:
        raise StoreError(f"state must be a non-empty 1-D float vector, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise StoreError(f"state must hold floats, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise StoreError("state contains NaN or infinity; refusing to store it")
    if dtype == "fp16" and np.max(np.abs(arr)) > FP16_MAX:
        raise StoreError(
            f"state has values beyond the fp16 range (|x| <= {FP16_MAX}); store it as fp32"
        )
    events_applied = _check_int("events_applied", events_applied, 0, MAX_EVENTS_APPLIED)
    last_event_time_ms = _check_int("last_event_time_ms", last_event_time_ms)
    write_time_ms = now_ms() if write_time_ms is None else _check_int("write_time_ms", write_time_ms)
    if not isinstance(last_event_id, str):
        raise StoreError(f"last_event_id must be a string, got {type(last_event_id).__name__}")
    id_bytes = last_event_id.encode("utf-8")
    if len(id_bytes) > 0xFFFF:
        raise StoreError(f"last_event_id is {len(id_bytes)} bytes; at most 65535 allowed")
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
    np_dtype = _CODE_TO_DTYPE[code]
    expected = HEADER_SIZE + id_len + size * np_dtype.itemsize
    if len(value) != expected:
        raise CorruptValue(key, f"length {len(value)} bytes, header implies {expected}")
    try:
        last_id = value[HEADER_SIZE:HEADER_SIZE + id_len].decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptValue(key, "last_event_id is not valid UTF-8") from None
    state = np.frombuffer(value, dtype=np_dtype, offset=HEADER_SIZE + id_len, count=size)
    return StoredState(
        state=state.astype(np.float32),  # a fresh writable array, widened from fp16
        events_applied=applied,
        last_event_time_ms=last_t,
        last_event_id=last_id,
        write_time_ms=write_t,
    )


def _encode_behaviour(event: Event) -> bytes:
    return (
        event.event_id.encode("utf-8") + b"\x00"
        + _BEHAVIOUR_SUFFIX.pack(event.item_id, event.category_id,
                                 BEHAVIOR_TYPES.index(event.behavior_type))
    )


def _check_members(key: str, members: Sequence[bytes]) -> None:
    n = _BEHAVIOUR_SUFFIX.size
    for m in members:
        if len(m) < n + 2 or m[-n - 1] != 0 or m[-1] >= len(BEHAVIOR_TYPES):
            raise CorruptValue(key, f"behaviour member {m[:40]!r} is not in the expected format")


# ---------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """The URL with its password replaced by *** (for messages and logs)."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return f"{scheme}://{user}:***@{host}"


class InterestStore:
    """Reads and writes interest states, version pointers, cold-start states and behaviour
    lists. `client` is a `redis.Redis` or `redis.cluster.RedisCluster` created with
    `decode_responses=False`. `ttl_seconds` (optional) expires per-user keys that stop being
    updated (states and behaviour lists; the version pointer and cold-start states never
    expire)."""

    def __init__(self, client, *, namespace: str = "uic", dtype: str = "fp32",
                 ttl_seconds: int | None = None):
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if not _NAME_RE.match(namespace or ""):
            raise StoreError(f"namespace must match {_NAME_RE.pattern}, got {namespace!r}")
        if ttl_seconds is not None:
            ttl_seconds = _check_int("ttl_seconds", ttl_seconds, 1)
        from redis.cluster import RedisCluster

        self.client = client
        self.namespace = namespace
        self.dtype = dtype
        self.ttl_seconds = ttl_seconds
        self.is_cluster = isinstance(client, RedisCluster)
        self._where = "redis"
        if self.is_cluster:
            kwargs = client.get_connection_kwargs()
        else:
            kwargs = client.connection_pool.connection_kwargs
            self._where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        if kwargs.get("decode_responses"):
            raise StoreError("the redis client must use decode_responses=False "
                             "(states are binary); create it without decode_responses")

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, check: bool = True,
                 **kw) -> InterestStore:
        """Connect to `url` (``redis://[user:password@]host:port/db``; ``rediss://`` for TLS).
        With `cluster=True` a RedisCluster client is made from the same URL (any node).
        With `check=True` (default) the connection and credentials are verified now, so a
        wrong password fails here with a clear StoreError instead of at the first write."""
        store_kw = {k: kw.pop(k) for k in ("namespace", "dtype", "ttl_seconds") if k in kw}
        where = redact_url(url)
        try:
            if cluster:
                from redis.cluster import RedisCluster

                client = RedisCluster.from_url(url, **kw)
            else:
                client = redis.Redis.from_url(url, **kw)
            store = cls(client, **store_kw)
            store._where = where
            if check:
                with store._errors():
                    client.ping()
                    if not cluster and _cluster_enabled(client):
                        raise StoreError(f"{where} is a Redis Cluster node: pass cluster=True")
        except StoreError:
            raise
        except ValueError as err:
            raise StoreError(f"bad Redis URL {where}: {err}") from err
        except redis.RedisError as err:
            raise StoreError(_explain(err, where)) from err
        return store

    # -- keys -----------------------------------------------------------------------------
    def _model(self, model: str) -> str:
        if not isinstance(model, str) or not _NAME_RE.match(model):
            raise StoreError(f"model name must match {_NAME_RE.pattern}, got {model!r}")
        return model

    def state_key(self, model: str, version: int, user_id: int) -> str:
        version = _check_int("version", version)
        user_id = _check_int("user_id", user_id)
        return f"{self.namespace}:{{u:{user_id}}}:s:{self._model(model)}:{version}"

    def behaviour_key(self, user_id: int) -> str:
        return f"{self.namespace}:{{u:{_check_int('user_id', user_id)}}}:b"

    def active_key(self, model: str) -> str:
        return f"{self.namespace}:m:{self._model(model)}:active"

    def cold_key(self, model: str, version: int) -> str:
        return f"{self.namespace}:m:{self._model(model)}:{_check_int('version', version)}:cold"

    def retire_key(self, model: str) -> str:
        """Hash version -> epoch ms after which a retired version's states may be deleted
        (written by the roll-out, read by its clean-up)."""
        return f"{self.namespace}:m:{self._model(model)}:retire"

    # -- error mapping ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except redis.ResponseError as err:
            if str(err).startswith("CORRUPT") or "CORRUPT stored state" in str(err):
                key = _key_from_corrupt(str(err))
                raise CorruptValue(key, "not a UIS state value (seen by the CAS script)") from err
            raise StoreError(_explain(err, self._where)) from err
        except redis.RedisError as err:
            raise StoreError(_explain(err, self._where)) from err

    # -- states -----------------------------------------------------------------------------
    def write_state(self, model: str, version: int, user_id: int, state, events_applied: int,
                    last_event_time_ms: int, last_event_id: str = "") -> bool:
        """CAS write of one state; True when it replaced the stored one (or there was none)."""
        return self.write_states(
            model, version, [(user_id, state, events_applied, last_event_time_ms, last_event_id)]
        )[0]

    def write_states(self, model: str, version: int,
                     rows: Sequence[tuple[int, np.ndarray, int, int, str]]) -> list[bool]:
        """CAS write of many states in one pipelined round trip. rows: (user_id, state,
        events_applied, last_event_time_ms, last_event_id). Returns one bool per row."""
        write_time = now_ms()
        ttl = self.ttl_seconds or 0
        cmds = []
        for i, row in enumerate(rows):
            if len(row) != 5:
                raise StoreError(f"row {i}: expected (user_id, state, events_applied, "
                                 f"last_event_time_ms, last_event_id), got {len(row)} items")
            user_id, state, applied, last_t, last_id = row
            key = self.state_key(model, version, user_id)
            try:
                value = encode_state(state, events_applied=applied, last_event_time_ms=last_t,
                                     last_event_id=last_id, write_time_ms=write_time,
                                     dtype=self.dtype)
            except StoreError as err:
                raise StoreError(f"row {i} (user {user_id}): {err}") from None
            cmds.append((key, value, int(applied)))
        if not cmds:
            return []
        with self._errors():
            results = self._run_cas(cmds, ttl)
        out = []
        for (key, _, _), res in zip(cmds, results, strict=True):
            if isinstance(res, Exception):
                if "CORRUPT" in str(res):
                    raise CorruptValue(key, "not a UIS state value (seen by the CAS script)")
                raise StoreError(_explain(res, self._where))
            out.append(bool(res))
        return out

    def _run_cas(self, cmds, ttl: int) -> list:
        for attempt in range(2):
            pipe = self._pipeline()
            for key, value, applied in cmds:
                # execute_command: cluster pipelines block the evalsha() helper, yet route
                # EVALSHA by its key like any other command.
                pipe.execute_command("EVALSHA", CAS_SHA, 1, key, value, applied, ttl)
            results = pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
                # First use on this server (or after SCRIPT FLUSH): load the script (on every
                # primary of a cluster) and redo all rows; CAS makes the rows already applied
                # a no-op the second time.
                self.client.script_load(CAS_SCRIPT)
                continue
            return results
        return results  # pragma: no cover

    def read_state(self, model: str, version: int, user_id: int) -> StoredState | None:
        return self.read_states(model, version, [user_id])[0]

    def read_states(self, model: str, version: int, user_ids: Sequence[int], *,
                    on_corrupt: str = "raise") -> list[StoredState | None]:
        """States of many users in one round trip (one MGET); None for users without one.
        `on_corrupt="none"` returns None for a corrupt value instead of raising CorruptValue."""
        if on_corrupt not in ("raise", "none"):
            raise StoreError(f"on_corrupt must be 'raise' or 'none', got {on_corrupt!r}")
        keys = [self.state_key(model, version, u) for u in user_ids]
        if not keys:
            return []
        with self._errors():
            values = self._mget(keys)
        out: list[StoredState | None] = []
        for key, value in zip(keys, values, strict=True):
            if value is None:
                out.append(None)
                continue
            try:
                out.append(decode_state(value, key))
            except CorruptValue:
                if on_corrupt == "raise":
                    raise
                out.append(None)
        return out

    def _mget(self, keys: list[str]) -> list:
        if self.is_cluster:
            return self.client.mget_nonatomic(keys)
        return self.client.mget(keys)

    def delete_version(self, model: str, version: int) -> int:
        """Delete every user's state of (model, version) and its cold-start state (retention
        clean-up). Uses SCAN, so it does not block the server. Returns keys deleted."""
        pattern = f"{self.namespace}:{{u:*}}:s:{self._model(model)}:{_check_int('version', version)}"
        deleted = 0
        batch: list[str | bytes] = []
        with self._errors():
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += self._unlink(batch)
                    batch = []
            batch.append(self.cold_key(model, version))
            deleted += self._unlink(batch)
        return deleted

    def _unlink(self, keys) -> int:
        pipe = self.client.pipeline(transaction=False) if not self.is_cluster else self.client.pipeline()
        for key in keys:
            pipe.unlink(key)
        return int(sum(pipe.execute()))

    # -- version pointer and cold start ----------------------------------------------------
    def set_active_version(self, model: str, version: int) -> None:
        version = _check_int("version", version)
        with self._errors():
            self.client.set(self.active_key(model), str(version))

    def get_active_version(self, model: str) -> int | None:
        key = self.active_key(model)
        with self._errors():
            value = self.client.get(key)
        if value is None:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CorruptValue(key, f"active version {value[:40]!r} is not an integer") from None

    def write_cold_start(self, model: str, version: int, state) -> None:
        value = encode_state(state, events_applied=0, last_event_time_ms=0, dtype=self.dtype)
        with self._errors():
            self.client.set(self.cold_key(model, version), value)

    def read_cold_start(self, model: str, version: int) -> np.ndarray | None:
        key = self.cold_key(model, version)
        with self._errors():
            value = self.client.get(key)
        return None if value is None else decode_state(value, key).state

    # -- behaviours (Architecture A) -------------------------------------------------------
    def append_behaviours(self, events: Iterable[Event], cap: int = 1000) -> int:
        """Add events to their users' behaviour lists and keep only the `cap` newest per user.
        Idempotent: an event already present is not added again. Returns how many members
        were new (a new event older than the cap's window is added and trimmed at once)."""
        cap = _check_int("cap", cap, 1)
        by_user: dict[int, dict[bytes, int]] = {}
        for ev in events:
            if not isinstance(ev, Event):
                raise StoreError(f"append_behaviours takes uic.events.Event, got {type(ev).__name__}")
            by_user.setdefault(ev.user_id, {})[_encode_behaviour(ev)] = ev.event_time_ms
        added = 0
        users = list(by_user)
        with self._errors():
            for start in range(0, len(users), 1000):
                pipe = self._pipeline()
                chunk = users[start:start + 1000]
                for uid in chunk:
                    key = self.behaviour_key(uid)
                    pipe.zadd(key, by_user[uid])
                    pipe.zremrangebyrank(key, 0, -cap - 1)
                    if self.ttl_seconds:
                        pipe.expire(key, self.ttl_seconds)
                results = pipe.execute()
                step = 3 if self.ttl_seconds else 2
                added += sum(int(r) for r in results[::step])
        return added

    def _pipeline(self):
        return self.client.pipeline() if self.is_cluster else self.client.pipeline(transaction=False)

    def _read_members(self, user_ids: Sequence[int], last_n: int, withscores: bool) -> list[list]:
        last_n = _check_int("length", last_n, 1)
        pipe = self._pipeline()
        keys = [self.behaviour_key(u) for u in user_ids]
        for key in keys:
            pipe.zrange(key, -last_n, -1, withscores=withscores)
        with self._errors():
            results = pipe.execute() if keys else []
        for key, members in zip(keys, results, strict=True):
            _check_members(key, [m for m, _ in members] if withscores else members)
        return results

    def read_behaviours(self, user_id: int, last_n: int) -> list[Event]:
        """The user's `last_n` newest behaviours, oldest first."""
        (members,) = self._read_members([user_id], last_n, withscores=True)
        n = _BEHAVIOUR_SUFFIX.size
        out = []
        for member, score in members:
            item, cate, code = _BEHAVIOUR_SUFFIX.unpack(member[-n:])
            out.append(Event(user_id=int(user_id), item_id=item, category_id=cate,
                             behavior_type=BEHAVIOR_TYPES[code], event_time_ms=int(score),
                             event_id=member[:-n - 1].decode("utf-8", errors="replace")))
        return out

    def read_behaviour_arrays(self, user_ids: Sequence[int], length: int
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item_ids int64 [B, L], cate_ids int64 [B, L], lens int32 [B]): each user's last
        `length` behaviours, oldest first, right-padded with 0, read in one round trip."""
        results = self._read_members(user_ids, length, withscores=False)
        b = len(results)
        items = np.zeros((b, length), np.int64)
        cates = np.zeros((b, length), np.int64)
        lens = np.zeros((b,), np.int32)
        n = _BEHAVIOUR_SUFFIX.size
        for row, members in enumerate(results):
            if not members:
                continue
            packed = np.frombuffer(b"".join(m[-n:] for m in members), dtype=_BEHAVIOUR_DTYPE)
            k = len(packed)
            items[row, :k] = packed["item"]
            cates[row, :k] = packed["cate"]
            lens[row] = k
        return items, cates, lens


def _cluster_enabled(client) -> bool:
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except redis.exceptions.NoPermissionError:  # an ACL user without INFO: assume standalone
        return False


def _key_from_corrupt(message: str) -> str:
    m = re.search(r"at key (\S+)", message)
    return m.group(1) if m else "<unknown>"


def _explain(err: Exception, where: str) -> str:
    """Turn a redis-py exception into a message that says what to do."""
    text = str(err)
    if isinstance(err, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return (f"Redis at {where} rejected the credentials ({text}). Put the right password "
                "(and ACL user, if any) in the URL: redis://[user]:password@host:port/0")
    if isinstance(err, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return (f"Redis ACL user at {where} lacks a permission ({text}). It needs read/write on "
                "keys uic:* and the commands get mget set eval evalsha script zadd zrange "
                "zremrangebyrank expire unlink scan ping.")
    if isinstance(err, redis.ConnectionError | redis.TimeoutError):
        return (f"cannot reach Redis at {where} ({text}). Is it running? Start one with "
                "`python -m uic.embedded_redis start --port 6390`.")
    if "CROSSSLOT" in text or "MOVED" in text or "same slot" in text or "cluster" in text.lower():
        return f"Redis Cluster error at {where} ({text}); pass cluster=True for a cluster."
    return f"Redis error at {where}: {text}"
