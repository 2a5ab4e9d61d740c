"""The interest store: per-user interest states and behaviour lists in Redis.

This is the one door to Redis: the only place that connects (`StoreConfig.connect`,
`StoreConfig.redis_client`), knows the key layout and runs the scripts. The Beam jobs, the
client, the demo and the benchmarks all go through it. The byte formats of the values are in
`uic.codec`; docs/store.md describes both for operators.

Key layout (every per-user key carries the hash tag ``{u:<user_id>}``, so all keys of one
user sit on one Redis Cluster slot and a Lua script may touch them together)::

    <ns>:{u:<uid>}:s:<model>:<version>   state value (bytes, `uic.codec`)
    <ns>:{u:<uid>}:b                      behaviour ZSET (Architecture A), capped
    <ns>:m:<model>:active                 active version of <model> (decimal string)
    <ns>:m:<model>:<version>:cold         cold-start state of (model, version)
    <ns>:m:<model>:retire                 hash version -> epoch ms after which a retired
                                          version's states may be deleted
    {<ns>:m:<model>:active}:complete      hash version -> users, written after a complete
                                          backfill: the version may be flipped to
    {<ns>:m:<model>:active}:deleting      hash version -> epoch ms, a clean-up is deleting it
    {<ns>:m:<model>:active}:pause         a roll-out's token while it pauses the stream jobs
                                          (expires by itself)
    {<ns>:m:<model>:active}:appliers      zset applier id -> lease expiry (epoch ms): stream
                                          job batches being applied right now

The last four carry the pointer's own key name as their hash tag, so on Redis Cluster they
share the pointer's slot and one script (`flip_active_version`) reads and sets them together.

Event streams (the Beam stream job's input, `beam_jobs.redis_streams`) are Redis Streams
named by the caller (default ``uic:events``), read through consumer groups; their methods
here are the stream job's only way to Redis.

State writes of the Beam jobs are a true compare-and-set inside Redis
(`compare_and_set_states`, one Lua script): the writer sends the header it read (events
applied and watermark, or "absent") and the state is replaced only if the stored header is
still exactly that one; otherwise the row is a conflict and the writer re-reads. Seeding and
benchmarks use `write_states`, which only moves a state forward (more events applied, a
watermark time not older) but does not detect a racing writer. Reads of many users are one MGET (one round trip; on a cluster one pipelined
MGET per node, sent to all nodes before any reply is read).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import redis

from uic import codec
from uic.codec import CodecError, CorruptValue, StoredState, StoreError, check_int
from uic.events import Event

__all__ = [
    "DEFAULT_BEHAVIOUR_CAP", "DEFAULT_NAMESPACE", "DEFAULT_REDIS_PORT", "DEFAULT_REDIS_URL",
    "CONFLICT", "CORRUPT", "DEFAULT_POINTER_CACHE_S", "IN_FLIGHT_GRACE_S", "WRITTEN", "CasRow",
    "CodecError", "CorruptState", "CorruptValue", "FlipRefused", "InterestStore", "StoreConfig", "StoredState", "StoreError", "StoreUnavailable",
    "StreamEntry", "StreamGroupStatus", "connect", "min_retention_s", "open_redis", "redact_url",
]

DEFAULT_REDIS_PORT = 6390
DEFAULT_REDIS_URL = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
DEFAULT_NAMESPACE = "uic"
DEFAULT_BEHAVIOUR_CAP = 1000  # behaviours kept per user for Architecture A
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_WRITE_VALUE = """
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""
# `write_states`: KEYS[1] state key. ARGV[1] new value, ARGV[2] its events_applied, ARGV[3]
# TTL seconds (0 none), ARGV[4] its last_event_time_ms. Returns 1 when written, 0 when the
# stored state has applied as many events or more, or has a newer watermark time.
FORWARD_SCRIPT = f"""
local old = redis.call('GET', KEYS[1])
if old then
  if string.len(old) < {codec.HEADER_SIZE} or string.sub(old, 1, {len(codec.MAGIC)}) ~= '{codec.MAGIC.decode()}' then
    return redis.error_reply('CORRUPT stored state at key ' .. KEYS[1] .. ' is not a UIS value')
  end
  local applied = struct.unpack('<i8', old, {codec.EVENTS_APPLIED_OFFSET + 1})
  local last_time = struct.unpack('<i8', old, {codec.LAST_EVENT_TIME_OFFSET + 1})
  if applied >= tonumber(ARGV[2]) or last_time > tonumber(ARGV[4]) then
    return 0
  end
end
{_WRITE_VALUE}"""
FORWARD_SHA = hashlib.sha1(FORWARD_SCRIPT.encode()).hexdigest()

# `compare_and_set_states`: KEYS[1] state key. ARGV[1] new value, ARGV[2] what the writer
# read: "" (no state), "H" .. `codec.cas_header` of the state it read, or "C" .. the SHA-1
# (hex) of the corrupt value it read and means to replace. ARGV[3] TTL seconds (0 none).
# Returns 1 written, 0 conflict (the stored value is not what the writer read), -1 corrupt
# (the stored value is not a UIS state and the writer did not expect that exact value).
CAS_SCRIPT = f"""
local old = redis.call('GET', KEYS[1])
local expected = ARGV[2]
if string.sub(expected, 1, 1) == 'C' then
  if not old or redis.sha1hex(old) ~= string.sub(expected, 2) then
    return 0
  end
elseif not old then
  if expected ~= '' then
    return 0
  end
else
  if string.len(old) < {codec.HEADER_SIZE} or string.sub(old, 1, {len(codec.MAGIC)}) ~= '{codec.MAGIC.decode()}' then
    return -1
  end
  local id_len = struct.unpack('<I2', old, {codec.ID_LEN_OFFSET + 1})
  if string.len(old) < {codec.HEADER_SIZE} + id_len then
    return -1
  end
  local header = 'H' .. string.sub(old, {codec.EVENTS_APPLIED_OFFSET + 1}, {codec.LAST_EVENT_TIME_OFFSET + 8})
    .. string.sub(old, {codec.HEADER_SIZE + 1}, {codec.HEADER_SIZE} + id_len)
  if header ~= expected then
    return 0
  end
end
{_WRITE_VALUE}"""
CAS_SHA = hashlib.sha1(CAS_SCRIPT.encode()).hexdigest()
_SCRIPTS = {FORWARD_SHA: FORWARD_SCRIPT, CAS_SHA: CAS_SCRIPT}

class StoreUnavailable(StoreError):
    """Redis is down or did not answer within the socket timeout. Transient: the same call
    may succeed once Redis is back (the stream job retries with back-off). Wrong
    credentials, missing permissions and TLS set-up failures are plain `StoreError`s: they
    need a fix, not a retry."""


WRITTEN, CONFLICT, CORRUPT = "written", "conflict", "corrupt"
"""Per-row outcomes of `InterestStore.compare_and_set_states`."""


@dataclasses.dataclass(frozen=True)
class CorruptState:
    """A stored state value that is not a well-formed UIS state, as `read_states(...,
    on_corrupt="report")` returns it: enough to dead-letter it and to replace exactly that
    value by compare-and-set."""

    key: str
    reason: str
    value: bytes


@dataclasses.dataclass(frozen=True)
class CasRow:
    """One state to compare-and-set: the new state with its header, and what the writer read
    (`expected`: the StoredState, None for "no state", or the CorruptState to replace)."""

    user_id: int
    state: np.ndarray
    events_applied: int
    last_event_time_ms: int
    last_event_id: str
    expected: StoredState | CorruptState | None


def _expected_arg(expected: StoredState | CorruptState | None) -> bytes:
    if expected is None:
        return b""
    if isinstance(expected, CorruptState):
        return b"C" + hashlib.sha1(expected.value).hexdigest().encode()
    if isinstance(expected, StoredState):
        return b"H" + codec.cas_header(expected.events_applied, expected.last_event_time_ms,
                                       expected.last_event_id)
    raise StoreError(f"expected must be a StoredState, a CorruptState or None, got "
                     f"{type(expected).__name__}")


@dataclasses.dataclass(frozen=True)
class StreamEntry:
    """One Redis Stream entry. `fields` is None when the entry was deleted (XDEL, MAXLEN
    trim) while it was still pending in a consumer group: its id is all that is left."""

    entry_id: str
    fields: dict[str, bytes] | None


@dataclasses.dataclass(frozen=True)
class StreamGroupStatus:
    """A consumer group's progress on a stream (`InterestStore.group_status`). `lag`:
    entries not yet delivered to the group (None when Redis cannot tell, e.g. after
    XDEL); `consumers`: name -> (pending entries, idle ms)."""

    length: int
    exists: bool
    lag: int | None
    pending: int = 0
    oldest_pending_idle_ms: int | None = None
    last_delivered_id: str | None = None
    consumers: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


# -- version pointer: how long readers may still use an old version, and the flip scripts --
DEFAULT_POINTER_CACHE_S = 1.0
"""How long a client caches the active-version pointer (`client.Scorer(active_ttl_s=...)`
default). A flip reaches every client within this time."""
IN_FLIGHT_GRACE_S = 2.0
"""Added to the pointer cache before an old version's states may be deleted: requests that
read the old pointer just before their cache expired are still in flight (the client's
default deadline is 200 ms; the rest is margin for slow clients and clock steps)."""


def min_retention_s(pointer_cache_s: float = DEFAULT_POINTER_CACHE_S) -> float:
    """The shortest time an old version's states are kept after a flip away from it: every
    cached pointer has expired and every request that used one has finished."""
    return float(pointer_cache_s) + IN_FLIGHT_GRACE_S


# `flip_active_version`: KEYS[1] pointer, KEYS[2] complete hash, KEYS[3] deleting hash,
# KEYS[4] pause flag, KEYS[5] (standalone only) the new version's cold-start key. ARGV[1] the
# pointer the caller expects ("" for none), ARGV[2] the new version, ARGV[3] the caller's
# pause token ("" when it paused nothing). Returns {outcome, pointer before}.
FLIP_SCRIPT = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {'moved', current} end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return {'deleting', current} end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return {'incomplete', current} end
if ARGV[3] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[3] then return {'unpaused', current} end
if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 0 then return {'no_cold_start', current} end
redis.call('SET', KEYS[1], ARGV[2])
return {'flipped', current}
"""
# `enter_apply`: KEYS[1] pause flag, KEYS[2] appliers zset. ARGV[1] applier id, ARGV[2] its
# lease's expiry (epoch ms). Registers the applier unless a roll-out paused the model; returns
# the pause token then (nil when registered). Registering and reading the flag in one script,
# against the roll-out's set-the-flag-then-count-the-appliers, means one of the two always
# sees the other.
ENTER_APPLY_SCRIPT = """
local pause = redis.call('GET', KEYS[1])
if pause then return pause end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return false
"""
# `resume_appliers`: KEYS[1] pause flag, ARGV[1] the token that set it. 1 removed, 0 not ours.
RESUME_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""
# `mark_version_complete`: KEYS[1] complete hash, KEYS[2] deleting hash. ARGV[1] version,
# ARGV[2] users. 1 marked, 0 refused (a clean-up is deleting the version).
MARK_COMPLETE_SCRIPT = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# `delete_inactive_version`, first step: KEYS[1] pointer, KEYS[2] complete hash, KEYS[3]
# deleting hash. ARGV[1] version, ARGV[2] epoch ms. 1 marked deleting (and no longer
# complete), 0 refused (the version is active).
MARK_DELETING_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"""

_FLIP_REFUSALS = {
    "moved": "the active version changed under this roll-out (another roll-out or roll-back "
             "ran meanwhile); check who else deploys, then re-run",
    "deleting": "a clean-up is deleting that version's states; re-run the roll-out to "
                "rebuild it (or let `--cleanup` finish if it was interrupted)",
    "incomplete": "that version has no completeness mark: no roll-out finished a complete "
                  "backfill of it (or a clean-up deleted it); run the roll-out for it",
    "no_cold_start": "that version has no cold-start state; run the roll-out for it",
    "unpaused": "the roll-out's pause of the stream jobs expired (or was removed) before the "
                "flip, so they may have applied events to the old version since the last "
                "catch-up; re-run the roll-out (with a longer --pause_seconds if it was slow)",
}


class FlipRefused(StoreError):
    """`flip_active_version` left the pointer as it was. `reason`: "moved", "deleting",
    "incomplete", "unpaused" or "no_cold_start"; `current`: the pointer now (None when unset)."""

    def __init__(self, model: str, version: int, reason: str, current: int | None):
        self.reason, self.current = reason, current
        super().__init__(f"not flipping {model} to v{version} (active: "
                         f"{'none' if current is None else f'v{current}'}): "
                         f"{_FLIP_REFUSALS[reason]}")


def redact_url(url: str) -> str:
    """The URL with its password replaced by *** (userinfo and ``?password=`` forms), for
    messages, logs, metric labels and pipeline options."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0] if ":" in creds else creds
        netloc = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() == "password" else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Where and how to reach the interest store. Picklable: Beam workers connect from it.

    Args:
      url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
      cluster: the URL names a Redis Cluster node.
      namespace: key prefix; a separate one holds e.g. point-in-time snapshots.
      dtype: how states are stored, ``fp32`` or ``fp16``.
      ttl_seconds: expire per-user keys that stop being updated (None: never).
      socket_timeout_s, connect_timeout_s: per-command and connect timeouts (None: none).
      max_connections: connection-pool size (None: redis-py's default).
      retries: redis-py's retries of a failed command (None: its default; 0 fails fast, for
        callers with a fallback of their own such as the client).
      password_env: name of an environment variable holding the Redis password, read when
        connecting. The secret then never sits in the URL, argv, logs or a pickled config
        (what Beam ships to its workers): only the variable's name does.
    """

    url: str = DEFAULT_REDIS_URL
    cluster: bool = False
    namespace: str = DEFAULT_NAMESPACE
    dtype: str = "fp32"
    ttl_seconds: int | None = None
    socket_timeout_s: float | None = 5.0
    connect_timeout_s: float | None = 5.0
    max_connections: int | None = None
    retries: int | None = None
    password_env: str | None = None

    def __repr__(self) -> str:  # never print the password
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                           if f.name != "url")
        return f"StoreConfig(url={redact_url(self.url)!r}, {fields})"

    def redis_client(self):
        """A redis-py client (`redis.Redis` or `RedisCluster`, binary replies) for this
        config. The only place in the project that creates one."""
        kw: dict = {"socket_timeout": self.socket_timeout_s,
                    "socket_connect_timeout": self.connect_timeout_s}
        if self.max_connections is not None:
            kw["max_connections"] = self.max_connections
        if self.password_env:
            password = os.environ.get(self.password_env)
            if password is None:
                raise StoreError(f"the Redis password variable {self.password_env} is not set "
                                 "in this process's environment (set it on every worker)")
            kw["password"] = password
        if self.retries is not None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            kw["retry"] = Retry(NoBackoff(), self.retries)
            kw["health_check_interval"] = 0
        try:
            if self.cluster:
                from redis.cluster import RedisCluster

                return RedisCluster.from_url(self.url, **kw)
            return redis.Redis.from_url(self.url, **kw)
        except ValueError as err:
            raise StoreError(f"bad Redis URL {redact_url(self.url)}: {err}") from None
        except redis.RedisError as err:
            raise _store_error(err, redact_url(self.url)) from err

    def connect(self, *, check: bool = True) -> InterestStore:
        """An `InterestStore` on this config. With `check=True` (default) the connection and
        credentials are verified now, so a wrong password fails here with a clear StoreError
        instead of at the first write."""
        where = redact_url(self.url)
        client = self.redis_client()
        store = InterestStore(client, namespace=self.namespace, dtype=self.dtype,
                              ttl_seconds=self.ttl_seconds)
        store._where = where
        if check:
            with store._errors():
                client.ping()
                if not self.cluster and _cluster_enabled(client):
                    raise StoreError(f"{where} is a Redis Cluster node: pass cluster=True")
        return store


def connect(url: str | StoreConfig = DEFAULT_REDIS_URL, *, check: bool = True,
            **overrides) -> InterestStore:
    """`InterestStore` from a URL or a `StoreConfig`, with field overrides
    (``connect(url, dtype="fp16")``)."""
    config = url if isinstance(url, StoreConfig) else StoreConfig(url=url)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return config.connect(check=check)


def open_redis(url: str | StoreConfig = DEFAULT_REDIS_URL, **overrides):
    """A raw redis-py client made by the store's connection code (for the development
    harness and tests that inspect Redis directly)."""
    config = url if isinstance(url, StoreConfig) else StoreConfig(url=url)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return config.redis_client()


class InterestStore:
    """Reads and writes interest states, version pointers, cold-start states and behaviour
    lists. `client` is a `redis.Redis` or `redis.cluster.RedisCluster` created with
    `decode_responses=False`. `ttl_seconds` (optional) expires per-user keys that stop being
    updated (states and behaviour lists; the version pointer and cold-start states never
    expire)."""

    def __init__(self, client, *, namespace: str = DEFAULT_NAMESPACE, dtype: str = "fp32",
                 ttl_seconds: int | None = None):
        if dtype not in codec.DTYPES:
            raise StoreError(f"dtype must be one of {list(codec.DTYPES)}, got {dtype!r}")
        if not _NAME_RE.match(namespace or ""):
            raise StoreError(f"namespace must match {_NAME_RE.pattern}, got {namespace!r}")
        if ttl_seconds is not None:
            ttl_seconds = check_int("ttl_seconds", ttl_seconds, 1)
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

    # -- keys -----------------------------------------------------------------------------
    def _model(self, model: str) -> str:
        if not isinstance(model, str) or not _NAME_RE.match(model):
            raise StoreError(f"model name must match {_NAME_RE.pattern}, got {model!r}")
        return model

    def state_key(self, model: str, version: int, user_id: int) -> str:
        version = check_int("version", version)
        user_id = check_int("user_id", user_id)
        return f"{self.namespace}:{{u:{user_id}}}:s:{self._model(model)}:{version}"

    def behaviour_key(self, user_id: int) -> str:
        return f"{self.namespace}:{{u:{check_int('user_id', user_id)}}}:b"

    def active_key(self, model: str) -> str:
        return f"{self.namespace}:m:{self._model(model)}:active"

    def cold_key(self, model: str, version: int) -> str:
        return f"{self.namespace}:m:{self._model(model)}:{check_int('version', version)}:cold"

    def retire_key(self, model: str) -> str:
        """Hash version -> epoch ms after which a retired version's states may be deleted
        (written by the roll-out, read by its clean-up)."""
        return f"{self.namespace}:m:{self._model(model)}:retire"

    def complete_key(self, model: str) -> str:
        """Hash version -> users: the versions a roll-out backfilled completely (the flip
        script refuses others). Tagged with the pointer's key: same Cluster slot."""
        return f"{{{self.active_key(model)}}}:complete"

    def deleting_key(self, model: str) -> str:
        """Hash version -> epoch ms: versions a clean-up is deleting (the flip script refuses
        them). Tagged with the pointer's key: same Cluster slot."""
        return f"{{{self.active_key(model)}}}:deleting"

    def pause_key(self, model: str) -> str:
        """A roll-out's pause token (with an expiry): stream jobs apply nothing while it is
        set. Tagged with the pointer's key: same Cluster slot."""
        return f"{{{self.active_key(model)}}}:pause"

    def appliers_key(self, model: str) -> str:
        """Zset applier id -> lease expiry (epoch ms) of the stream job batches being applied
        now. Tagged with the pointer's key: same Cluster slot."""
        return f"{{{self.active_key(model)}}}:appliers"

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
            raise _store_error(err, self._where) from err

    # -- states -----------------------------------------------------------------------------
    def write_state(self, model: str, version: int, user_id: int, state, events_applied: int,
                    last_event_time_ms: int, last_event_id: str = "") -> bool:
        """Forward-only write of one state (see `write_states`); True when written."""
        return self.write_states(
            model, version, [(user_id, state, events_applied, last_event_time_ms, last_event_id)]
        )[0]

    def write_states(self, model: str, version: int,
                     rows: Sequence[tuple[int, np.ndarray, int, int, str]]) -> list[bool]:
        """Forward-only write of many states in one pipelined round trip, for seeding and
        benchmarks. rows: (user_id, state, events_applied, last_event_time_ms,
        last_event_id). A row replaces the stored state only if it has applied more events
        and its watermark time is not older. It does not see a racing writer that read the
        same state: concurrent updaters use `compare_and_set_states`. One bool per row."""
        cmds = []
        for i, row in enumerate(rows):
            if len(row) != 5:
                raise StoreError(f"row {i}: expected (user_id, state, events_applied, "
                                 f"last_event_time_ms, last_event_id), got {len(row)} items")
            user_id, state, applied, last_t, last_id = row
            key, value = self._encode_row(i, model, version, user_id, state, applied, last_t,
                                          last_id)
            cmds.append((key, (value, int(applied), self.ttl_seconds or 0, int(last_t))))
        results = self._run_script(FORWARD_SHA, cmds)
        out = []
        for (key, _), res in zip(cmds, results, strict=True):
            if isinstance(res, Exception):
                if "CORRUPT" in str(res):
                    raise CorruptValue(key, "not a UIS state value (seen by the write script)")
                raise StoreError(_explain(res, self._where))
            out.append(bool(res))
        return out

    def compare_and_set_states(self, model: str, version: int, rows: Sequence[CasRow]
                               ) -> list[str]:
        """Compare-and-set many states in one pipelined round trip. Each row is written only
        if the stored value is still what its writer read (`CasRow.expected`, compared
        byte-exactly on events_applied, watermark time and watermark id). Returns per row
        WRITTEN, CONFLICT (someone wrote in between: re-read and redo) or CORRUPT (the stored
        value is not a UIS state: read it with on_corrupt="report" and replace it). A row
        whose watermark is older than the one it expects is refused with StoreError: the
        watermark never goes backwards."""
        cmds = []
        for i, row in enumerate(rows):
            if not isinstance(row, CasRow):
                raise StoreError(f"row {i}: expected a CasRow, got {type(row).__name__}")
            exp = row.expected
            if isinstance(exp, StoredState) and (
                    (row.last_event_time_ms, row.last_event_id) < exp.watermark):
                raise StoreError(
                    f"row {i} (user {row.user_id}): watermark ({row.last_event_time_ms}, "
                    f"{row.last_event_id!r}) is older than the stored one {exp.watermark}; a "
                    "state's watermark never goes backwards")
            key, value = self._encode_row(i, model, version, row.user_id, row.state,
                                          row.events_applied, row.last_event_time_ms,
                                          row.last_event_id)
            cmds.append((key, (value, _expected_arg(exp), self.ttl_seconds or 0)))
        results = self._run_script(CAS_SHA, cmds)
        out = []
        for res in results:
            if isinstance(res, Exception):
                raise StoreError(_explain(res, self._where))
            out.append({1: WRITTEN, 0: CONFLICT, -1: CORRUPT}[int(res)])
        return out

    def _encode_row(self, i: int, model: str, version: int, user_id, state, applied, last_t,
                    last_id) -> tuple[str, bytes]:
        key = self.state_key(model, version, user_id)
        try:
            value = codec.encode_state(state, events_applied=applied, last_event_time_ms=last_t,
                                       last_event_id=last_id, dtype=self.dtype)
        except CodecError as err:
            raise StoreError(f"row {i} (user {user_id}): {err}") from None
        return key, value

    def _run_script(self, sha: str, cmds: list[tuple[str, tuple]]) -> list:
        """EVALSHA `sha` once per (key, args), pipelined. On first use on a server (or after
        SCRIPT FLUSH) the rows refused with NOSCRIPT were not run: load the script (on every
        primary of a cluster) and run those rows again."""
        results: list = [redis.exceptions.NoScriptError("not run")] * len(cmds)
        with self._errors():
            for attempt in range(2):
                todo = [i for i, r in enumerate(results)
                        if isinstance(r, redis.exceptions.NoScriptError)]
                if not todo:
                    break
                if attempt:
                    self.client.script_load(_SCRIPTS[sha])
                pipe = self._pipeline()
                for i in todo:
                    key, args = cmds[i]
                    # execute_command: cluster pipelines block the evalsha() helper, yet route
                    # EVALSHA by its key like any other command.
                    pipe.execute_command("EVALSHA", sha, 1, key, *args)
                for i, res in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                    results[i] = res
        return results

    def read_state(self, model: str, version: int, user_id: int) -> StoredState | None:
        return self.read_states(model, version, [user_id])[0]

    def read_states(self, model: str, version: int, user_ids: Sequence[int], *,
                    on_corrupt: str = "raise") -> list[StoredState | CorruptState | None]:
        """States of many users in one round trip (one MGET); None for users without one.
        A corrupt value raises CorruptValue (`on_corrupt="raise"`), reads as None ("none"),
        or is returned as a `CorruptState` ("report", for writers that replace it)."""
        if on_corrupt not in ("raise", "none", "report"):
            raise StoreError(f"on_corrupt must be 'raise', 'none' or 'report', got "
                             f"{on_corrupt!r}")
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
                out.append(codec.decode_state(value, key))
            except CorruptValue as err:
                if on_corrupt == "raise":
                    raise
                out.append(CorruptState(key, err.reason, bytes(value))
                           if on_corrupt == "report" else None)
        return out

    def _mget(self, keys: list[str]) -> list:
        if self.is_cluster:
            return self.client.mget_nonatomic(keys)
        return self.client.mget(keys)

    def delete_version(self, model: str, version: int) -> int:
        """Delete every user's state of (model, version) and its cold-start state, whether
        active or not (`delete_inactive_version` is the safe one). Its completeness mark goes
        first, so no flip to it succeeds from then on. Uses SCAN, so it does not block the
        server. Returns the state and cold-start keys deleted."""
        pattern = f"{self.namespace}:{{u:*}}:s:{self._model(model)}:{check_int('version', version)}"
        deleted = 0
        batch: list[str | bytes] = []
        with self._errors():
            self.client.hdel(self.complete_key(model), str(version))
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += self._unlink(batch)
                    batch = []
            batch.append(self.cold_key(model, version))
            deleted += self._unlink(batch)
        return deleted

    def _unlink(self, keys) -> int:
        pipe = self._pipeline()
        for key in keys:
            pipe.unlink(key)
        return int(sum(pipe.execute()))

    # -- version pointer and cold start ----------------------------------------------------
    def set_active_version(self, model: str, version: int) -> None:
        """Set the pointer unconditionally: a first deployment, tests and tools. Roll-outs and
        roll-backs use `flip_active_version`, which checks the version first."""
        version = check_int("version", version)
        with self._errors():
            self.client.set(self.active_key(model), str(version))

    def flip_active_version(self, model: str, version: int, expected: int | None,
                            pause_token: str | None = None) -> None:
        """Point `model` at `version` in one Redis script, only if the pointer still says
        `expected` (None: unset), the version is marked complete, no clean-up is deleting it,
        its cold-start state exists and (with `pause_token`) the caller's pause of the stream
        jobs still holds. Raises `FlipRefused` (pointer unchanged) otherwise.
        On Redis Cluster the cold-start key lives on another slot, so it is checked just
        before the script; it is only deleted after the version is marked deleting, which
        the script does check."""
        version = check_int("version", version)
        keys = [self.active_key(model), self.complete_key(model), self.deleting_key(model),
                self.pause_key(model)]
        if self.is_cluster:
            with self._errors():
                if not self.client.exists(self.cold_key(model, version)):
                    raise FlipRefused(model, version, "no_cold_start",
                                      self.get_active_version(model))
        else:
            keys.append(self.cold_key(model, version))
        expect = "" if expected is None else str(check_int("expected", expected))
        outcome, before = self._eval(FLIP_SCRIPT, keys, [expect, str(version), pause_token or ""])
        if _text(outcome) != "flipped":
            before = _text(before)
            raise FlipRefused(model, version, _text(outcome), int(before) if before else None)

    # -- pausing the stream jobs around a flip (beam_jobs.rollout) ---------------------------
    def enter_apply(self, model: str, applier: str, lease_until_ms: int) -> str | None:
        """Register `applier` as applying a batch of `model` until it leaves (or its lease
        ends), unless a roll-out paused the model: then nothing is registered and the
        pause token is returned."""
        token = self._eval(ENTER_APPLY_SCRIPT, [self.pause_key(model), self.appliers_key(model)],
                           [applier, str(check_int("lease_until_ms", lease_until_ms))])
        return None if token is None else _text(token)

    def leave_apply(self, model: str, applier: str) -> None:
        with self._errors():
            self.client.zrem(self.appliers_key(model), applier)

    def pause_appliers(self, model: str, token: str, ttl_ms: int) -> bool:
        """Set the pause flag to `token` for `ttl_ms` unless another pause holds it; True
        when set. Stream jobs register no new batch from now on."""
        with self._errors():
            return bool(self.client.set(self.pause_key(model), token, nx=True,
                                        px=check_int("ttl_ms", ttl_ms, 1)))

    def busy_appliers(self, model: str, now_ms: int) -> int:
        """How many batches are still being applied (leases that ended are dropped: their
        applier died)."""
        key = self.appliers_key(model)
        with self._errors():
            self.client.zremrangebyscore(key, "-inf", f"({check_int('now_ms', now_ms)}")
            return int(self.client.zcard(key))

    def resume_appliers(self, model: str, token: str) -> bool:
        """Remove the pause flag if `token` set it; False when it had expired or was not ours."""
        return bool(self._eval(RESUME_SCRIPT, [self.pause_key(model)], [token]))

    def mark_version_complete(self, model: str, version: int, users: int) -> bool:
        """Record that `version`'s states are complete (`users` written): the flip may now
        point at it. False (nothing marked) while a clean-up is deleting the version."""
        version, users = check_int("version", version), check_int("users", users)
        return bool(self._eval(MARK_COMPLETE_SCRIPT,
                               [self.complete_key(model), self.deleting_key(model)],
                               [str(version), str(users)]))

    def complete_versions(self, model: str) -> dict[int, int]:
        """Versions marked complete -> their user count."""
        return self._int_hash(self.complete_key(model))

    def deleting_versions(self, model: str) -> dict[int, int]:
        """Versions a clean-up is deleting -> epoch ms it started (left behind by a clean-up
        that was interrupted; the next one finishes it)."""
        return self._int_hash(self.deleting_key(model))

    def _eval(self, script: str, keys: list[str], args: list[str]):
        """Run a pointer script (loaded on first use; its keys share one Cluster slot)."""
        with self._errors():
            return self.client.register_script(script)(keys=keys, args=args)

    def _int_hash(self, key: str) -> dict[int, int]:
        with self._errors():
            raw = self.client.hgetall(key)
        try:
            return {int(k): int(v) for k, v in raw.items()}
        except ValueError:
            raise CorruptValue(key, f"hash holds non-integers: {raw!r:.80}") from None

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
        value = codec.encode_state(state, events_applied=0, last_event_time_ms=0, dtype=self.dtype)
        with self._errors():
            self.client.set(self.cold_key(model, version), value)

    def read_cold_start(self, model: str, version: int) -> np.ndarray | None:
        key = self.cold_key(model, version)
        with self._errors():
            value = self.client.get(key)
        return None if value is None else codec.decode_state(value, key).state

    # -- behaviours (Architecture A) -------------------------------------------------------
    def append_behaviours(self, events: Iterable[Event], cap: int = DEFAULT_BEHAVIOUR_CAP) -> int:
        """Add events to their users' behaviour lists and keep only the `cap` newest per user.
        Idempotent: an event already present is not added again. Returns how many members
        were new (a new event older than the cap's window is added and trimmed at once)."""
        cap = check_int("cap", cap, 1)
        by_user: dict[int, dict[bytes, int]] = {}
        for ev in events:
            if not isinstance(ev, Event):
                raise StoreError(f"append_behaviours takes uic.events.Event, got {type(ev).__name__}")
            by_user.setdefault(ev.user_id, {})[codec.encode_behaviour(ev)] = ev.event_time_ms
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

    # -- retirement of old versions (roll-out) ----------------------------------------------
    def retire_version(self, model: str, version: int, delete_after_ms: int) -> None:
        """Mark `version` of `model` for deletion once epoch ms `delete_after_ms` has passed.
        Its states stay readable until `delete_retired_versions` runs after that time, so
        flipping the active pointer back is an instant roll-back."""
        version = check_int("version", version)
        delete_after_ms = check_int("delete_after_ms", delete_after_ms)
        with self._errors():
            self.client.hset(self.retire_key(model), str(version), str(delete_after_ms))

    def retired_versions(self, model: str) -> dict[int, int]:
        """Retired versions of `model`: version -> epoch ms after which it may be deleted."""
        return self._int_hash(self.retire_key(model))

    def unretire_version(self, model: str, version: int) -> None:
        """Take `version` off the retirement list (a roll-out or roll-back to it)."""
        with self._errors():
            self.client.hdel(self.retire_key(model), str(check_int("version", version)))

    def delete_inactive_version(self, model: str, version: int) -> int | None:
        """Delete `version`'s states unless it is active: one script marks it deleting (and
        drops its completeness mark) only if the pointer does not name it, so a roll-back to
        it and this deletion exclude each other. None when it is active (nothing deleted);
        else the keys deleted. The mark is removed once every key is gone; an interrupted
        deletion leaves it, which keeps refusing flips to the half-deleted version."""
        version = check_int("version", version)
        marked = self._eval(MARK_DELETING_SCRIPT, [self.active_key(model),
                                                   self.complete_key(model),
                                                   self.deleting_key(model)],
                            [str(version), str(codec.now_ms())])
        if not marked:
            return None
        deleted = self.delete_version(model, version)
        with self._errors():
            self.client.hdel(self.deleting_key(model), str(version))
        return deleted

    def delete_retired_versions(self, model: str, now_ms: int | None = None) -> dict[int, int]:
        """Delete the states of every retired version whose deadline is at or before `now_ms`
        (default: now) and forget it; a retired version that is active again (rolled back
        to) is forgotten and kept. Returns version -> keys deleted."""
        now = codec.now_ms() if now_ms is None else check_int("now_ms", now_ms)
        active = self.get_active_version(model)
        deleted: dict[int, int] = {}
        for version, deadline in sorted(self.retired_versions(model).items()):
            if version != active and deadline <= now:
                keys = self.delete_inactive_version(model, version)
                if keys is not None:
                    deleted[version] = keys
            if version == active or deadline <= now:
                self.unretire_version(model, version)
        return deleted

    # -- event streams (input of the Beam stream job) ----------------------------------------
    def add_to_stream(self, stream: str, entries: Iterable[Mapping[str, bytes | str]], *,
                      maxlen: int | None = None) -> list[str]:
        """XADD each entry (a field -> value mapping), pipelined (one round trip per 1,000).
        With `maxlen`, the stream is then trimmed towards that many entries, but only of
        entries every consumer group has read and acknowledged (`trim_consumed`): an entry
        nobody has processed is never trimmed. Returns the ids."""
        if maxlen is not None:
            maxlen = check_int("maxlen", maxlen, 1)
        ids: list[str] = []
        it = iter(entries)
        with self._errors():
            while batch := list(itertools.islice(it, 1000)):
                pipe = self._pipeline()
                for fields in batch:
                    pipe.xadd(stream, dict(fields))
                ids.extend(_text(i) for i in pipe.execute())
        if maxlen is not None:
            self.trim_consumed(stream, maxlen)
        return ids

    def trim_consumed(self, stream: str, maxlen: int) -> int:
        """Delete the oldest entries beyond `maxlen`, but only those below every consumer
        group's oldest pending entry and at or below its last-delivered id (XTRIM MINID). A
        stream without a group keeps everything: its entries are all unread. Returns how
        many entries were deleted."""
        maxlen = check_int("maxlen", maxlen, 1)
        with self._errors():
            excess = int(self.client.xlen(stream)) - maxlen
            if excess <= 0:
                return 0
            try:
                groups = self.client.xinfo_groups(stream)
            except redis.ResponseError:
                return 0
            if not groups:
                return 0
            bounds = []  # per group: entries with an id below this are consumed
            for info in groups:
                pending = self.client.xpending(stream, info["name"])
                if pending["pending"]:
                    bounds.append(_stream_id(pending["min"]))
                else:
                    ms, seq = _stream_id(info["last-delivered-id"])
                    bounds.append((ms, seq + 1))
            bound = min(bounds)
            consumed = self.client.xrange(stream, min="-", max=f"({bound[0]}-{bound[1]}",
                                          count=excess)
            if not consumed:
                return 0
            ms, seq = _stream_id(consumed[-1][0])
            return int(self.client.xtrim(stream, minid=f"{ms}-{seq + 1}", approximate=False))

    def stream_length(self, stream: str) -> int:
        with self._errors():
            return int(self.client.xlen(stream))

    def create_group(self, stream: str, group: str, start_id: str = "0") -> bool:
        """Create consumer group `group` of `stream` (and the stream) unless it exists.
        `start_id` "0" delivers the whole stream to a new group, "$" only later entries.
        Returns True when it was created now."""
        with self._errors():
            try:
                self.client.xgroup_create(stream, group, id=start_id, mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
                return False
        return True

    def read_new(self, stream: str, group: str, consumer: str, *, count: int,
                 block_ms: int | None = None) -> list[StreamEntry]:
        """Up to `count` entries never delivered to the group (XREADGROUP ... >), waiting up to
        `block_ms` for the first one (None: do not wait). They become pending for `consumer`
        until `ack`."""
        return self._read_group(stream, group, consumer, ">", count, block_ms)

    def read_pending(self, stream: str, group: str, consumer: str, *, count: int,
                     after: str = "0") -> list[StreamEntry]:
        """Up to `count` of `consumer`'s own pending entries (delivered, never acknowledged)
        with ids after `after`: what a killed run of this consumer read but did not ack."""
        return self._read_group(stream, group, consumer, after, count, None)

    def _read_group(self, stream, group, consumer, start, count, block_ms) -> list[StreamEntry]:
        count = check_int("count", count, 1)
        with self._errors():
            reply = self.client.xreadgroup(group, consumer, {stream: start}, count=count,
                                           block=block_ms)
        return _stream_entries(reply[0][1] if reply else [])

    def claim_idle(self, stream: str, group: str, consumer: str, *, min_idle_ms: int,
                   count: int) -> list[StreamEntry]:
        """Take over up to `count` entries that other consumers of the group left pending for
        at least `min_idle_ms` (XAUTOCLAIM): the work of a consumer that died."""
        with self._errors():
            reply = self.client.xautoclaim(stream, group, consumer,
                                           min_idle_time=check_int("min_idle_ms", min_idle_ms),
                                           count=check_int("count", count, 1))
        return _stream_entries(reply[1] if reply else [])

    def ack(self, stream: str, group: str, entry_ids: Sequence[str], *,
            dead_letters: Sequence[Mapping[str, bytes | str]] = (),
            dead_letter_stream: str | None = None) -> None:
        """XADD `dead_letters` to `dead_letter_stream`, then XACK `entry_ids`, in one pipelined
        round trip. Dead letters go first, so a crash in between can at worst repeat a dead
        letter, never acknowledge an entry whose dead letter is lost. No MULTI: on a cluster
        the stream and its dead-letter stream may live on different nodes."""
        if dead_letters and not dead_letter_stream:
            raise StoreError("ack: dead_letters given without a dead_letter_stream")
        if not entry_ids and not dead_letters:
            return
        with self._errors():
            pipe = self._pipeline()
            for fields in dead_letters:
                pipe.xadd(dead_letter_stream, dict(fields))
            if entry_ids:
                pipe.xack(stream, group, *entry_ids)
            pipe.execute()

    def pending_count(self, stream: str, group: str) -> int:
        """Entries of the group delivered but not yet acknowledged (all consumers)."""
        with self._errors():
            return int(self.client.xpending(stream, group)["pending"])

    def group_status(self, stream: str, group: str) -> StreamGroupStatus:
        """How far `group` is behind on `stream` and what it holds unacknowledged, read with
        XLEN, XINFO GROUPS / CONSUMERS and XPENDING (a few round trips; for status pages)."""
        with self._errors():
            length = int(self.client.xlen(stream))
            try:
                groups = self.client.xinfo_groups(stream)
            except redis.ResponseError as err:
                if "no such key" not in str(err).lower():
                    raise
                groups = []
            info = next((g for g in groups if _text(g["name"]) == group), None)
            if info is None:
                return StreamGroupStatus(length, exists=False, lag=length)
            consumers = {_text(c["name"]): (int(c["pending"]), int(c["idle"]))
                         for c in self.client.xinfo_consumers(stream, group)}
            oldest = self.client.xpending_range(stream, group, "-", "+", 1)
        lag = info.get("lag")
        return StreamGroupStatus(
            length, exists=True, lag=None if lag is None else int(lag),
            pending=int(info["pending"]),
            oldest_pending_idle_ms=int(oldest[0]["time_since_delivered"]) if oldest else None,
            last_delivered_id=_text(info["last-delivered-id"]), consumers=consumers)

    def replay_stream(self, stream: str, *, after: str | None = None, chunk: int = 1000
                      ) -> Iterator[list[StreamEntry]]:
        """Every retained entry of `stream` (after id `after`, if given) in id order, in
        lists of up to `chunk`; reads no consumer group and acknowledges nothing."""
        chunk = check_int("chunk", chunk, 1)
        start = "-" if after is None else f"({after}"
        while True:
            with self._errors():
                entries = _stream_entries(self.client.xrange(stream, min=start, count=chunk))
            if not entries:
                return
            yield entries
            start = f"({entries[-1].entry_id}"

    def _pipeline(self):
        return self.client.pipeline() if self.is_cluster else self.client.pipeline(transaction=False)

    def _read_members(self, user_ids: Sequence[int], last_n: int, withscores: bool) -> list[list]:
        last_n = check_int("length", last_n, 1)
        pipe = self._pipeline()
        keys = [self.behaviour_key(u) for u in user_ids]
        for key in keys:
            pipe.zrange(key, -last_n, -1, withscores=withscores)
        with self._errors():
            results = pipe.execute() if keys else []
        for key, members in zip(keys, results, strict=True):
            codec.check_behaviour_members(key, [m for m, _ in members] if withscores else members)
        return results

    def read_behaviours(self, user_id: int, last_n: int) -> list[Event]:
        """The user's `last_n` newest behaviours, oldest first."""
        (members,) = self._read_members([user_id], last_n, withscores=True)
        return [codec.decode_behaviour(user_id, member, score) for member, score in members]

    def read_behaviour_logs(self, user_ids: Sequence[int], last_n: int) -> list[list[Event]]:
        """Each user's `last_n` newest behaviours, oldest first (history order), read in one
        round trip."""
        rows = self._read_members(user_ids, last_n, withscores=True)
        return [[codec.decode_behaviour(u, member, score) for member, score in members]
                for u, members in zip(user_ids, rows, strict=True)]

    def read_behaviour_arrays(self, user_ids: Sequence[int], length: int
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item_ids int64 [B, L], cate_ids int64 [B, L], lens int32 [B]): each user's last
        `length` behaviours, oldest first, right-padded with 0, read in one round trip."""
        return codec.behaviour_arrays(self._read_members(user_ids, length, withscores=False),
                                      length)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_entries(raw) -> list[StreamEntry]:
    # An entry always has a field (XADD requires one): no fields means deleted while pending.
    return [StreamEntry(_text(entry_id),
                        {_text(k): v for k, v in fields.items()} if fields else None)
            for entry_id, fields in raw or []]


def _stream_id(value) -> tuple[int, int]:
    """A stream entry id ``<ms>-<seq>`` as a comparable pair."""
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _cluster_enabled(client) -> bool:
    try:
        return bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except redis.exceptions.NoPermissionError:  # an ACL user without INFO: assume standalone
        return False


def _key_from_corrupt(message: str) -> str:
    m = re.search(r"at key (\S+)", message)
    return m.group(1) if m else "<unknown>"


def _tls_says_so(text: str) -> bool:
    return "SSL" in text or "certificate" in text or "EOF occurred in violation of protocol" in text


def _is_tls_failure(err: Exception, where: str) -> bool:
    """A failed TLS handshake or certificate check, or a rediss:// connection that got no
    handshake (e.g. a plaintext server); a refused connection is a server that is down."""
    text = str(err)
    return _tls_says_so(text) or (where.startswith("rediss:") and "refused" not in text.lower())


def _store_error(err: redis.RedisError, where: str) -> StoreError:
    """The StoreError for a redis-py exception: `StoreUnavailable` when Redis is down or
    silent (worth retrying), a plain StoreError for what needs a fix (credentials, TLS)."""
    transient = (isinstance(err, redis.ConnectionError | redis.TimeoutError)
                 and not isinstance(err, redis.AuthenticationError)
                 and not _tls_says_so(str(err)))
    return (StoreUnavailable if transient else StoreError)(_explain(err, where))


def _explain(err: Exception, where: str) -> str:
    """Turn a redis-py exception into a message that says what to do."""
    text = str(err)
    if isinstance(err, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return (f"Redis at {where} rejected the credentials ({text}). Put the right password "
                "(and ACL user, if any) in the URL: redis://[user]:password@host:port/0")
    if isinstance(err, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return (f"Redis ACL user at {where} lacks a permission ({text}). It needs read/write on "
                "keys uic:* and the commands get mget set eval evalsha script zadd zrange "
                "zremrangebyrank expire unlink scan ping hset hgetall hdel; the Beam stream "
                "job also xadd xlen xgroup xreadgroup xautoclaim xack xpending xrange.")
    if isinstance(err, redis.ConnectionError | redis.TimeoutError) and _is_tls_failure(err, where):
        return (f"TLS with Redis at {where} failed ({text}). Pass the CA that signed the "
                "server's certificate as ?ssl_ca_certs=/path/ca.pem; if the server requires "
                "client certificates, also ?ssl_certfile=...&ssl_keyfile=...")
    if isinstance(err, redis.ConnectionError | redis.TimeoutError):
        return (f"cannot reach Redis at {where} ({text}). Is it running? Start one with "
                f"`make redis-start` (port {DEFAULT_REDIS_PORT}).")
    if "CROSSSLOT" in text or "MOVED" in text or "same slot" in text or "cluster" in text.lower():
        return f"Redis Cluster error at {where} ({text}); pass cluster=True for a cluster."
    return f"Redis error at {where}: {text}"
