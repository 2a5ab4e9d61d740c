"""Score one user against N candidates: the per-request path of a ranking service.

Architecture B (UIC, default): read the user's interest state for the active model version
from Redis (one GET), call `<model>_head` pinned to that version with the state and the
candidates. Architecture A (baseline): read the user's last L behaviours from the behaviour
list, call `<model>_full` pinned to the active version.

Requests follow the batch-major model contract (version 2) with one user: state [1, S] sent
once (never tiled per candidate), or history [1, L] with `hist_len` [1], and candidates
[1, N'] padded to a few fixed sizes (`client.candidates.padded_candidates`); the answer is
`ctr` [1, N'], of which the first N scores are the caller's.

Why it is built this way (docs/client.md has the full story):
* The version comes from the active-version pointer (cached `active_ttl_s`, default 1 s, so
  it costs a Redis round trip once a second, not per request). The state key carries the
  version and the Predict request pins it, so a state written by tower v is only ever sent
  to head v, even while the pointer flips.
* Unknown user -> the cold-start state of that version (status ``cold_start``).
* Redis down or slower than `redis_timeout_ms` -> the fallback: the cold-start state cached
  in the client for the last known version (status ``degraded``), and a short circuit breaker
  (`redis_retry_after_s`) so a dead Redis does not cost a timeout on every request. With
  ``fallback="error"`` the call raises `StateStoreUnavailable` instead.
* Model server problems are not hidden: UNAVAILABLE is retried a bounded number of times
  within the deadline, then `ModelServerUnavailable`; other errors raise `ModelServerError`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
import time
from collections.abc import Sequence

import numpy as np
import redis

from client.candidates import MAX_CANDIDATES, candidate_arrays, check_user, padded_candidates
from client.errors import InvalidRequest, ModelServerError, NotDeployed, StateStoreUnavailable
from client.tls import TlsConfig
from client.transport import make_transport
from uic.contract import MODELS, serving_model_name
from uic.store import (
    DEFAULT_NAMESPACE,
    DEFAULT_POINTER_CACHE_S,
    DEFAULT_REDIS_URL,
    CorruptValue,
    InterestStore,
    StoreConfig,
    StoreError,
)

ARCH_PARTS = {"A": "full", "B": "head"}  # architecture -> the model part it calls
ARCHS = tuple(ARCH_PARTS)
FALLBACKS = ("cold_start", "error")


class ScoreStatus(enum.StrEnum):
    FRESH = "fresh"            # the user's own state (B) / behaviours (A), recently updated
    STALE = "stale"            # the user's own state, but not updated for `stale_after_s`
    COLD_START = "cold_start"  # unknown user: the version's cold-start state / empty history
    DEGRADED = "degraded"      # Redis unreachable, slow or corrupt value: cold-start fallback


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Scores (float32 [N], same order as the candidates) and how they were obtained."""

    scores: np.ndarray
    item_ids: np.ndarray
    cate_ids: np.ndarray
    status: ScoreStatus
    model: str
    version: int
    arch: str
    served_model: str                # e.g. "dien_head" (B) or "dien_full" (A)
    transport: str
    state_age_ms: float | None       # now - state write time (B); None for A / no state
    events_applied: int | None       # events folded into the state (B) / history length (A)
    redis_ms: float                  # Redis reads (pointer refresh included when it happened)
    build_ms: float                  # turning numpy inputs into the wire request
    rpc_ms: float                    # send, wait, decode the answer (retries included)
    total_ms: float
    attempts: int                    # RPC attempts (1 unless UNAVAILABLE was retried)
    reason: str | None = None        # why the status is degraded / cold_start

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        for key in ("scores", "item_ids", "cate_ids"):
            out[key] = getattr(self, key).tolist()
        return out


@dataclasses.dataclass(frozen=True)
class _UserInputs:
    """The user side of a Predict request (state for B, history for A) and its provenance."""

    tensors: dict[str, np.ndarray]
    status: ScoreStatus
    reason: str | None = None
    age_ms: float | None = None
    events: int | None = None


class _RedisDown(Exception):
    """Redis cannot answer this read (down, slow, breaker open, corrupt value): fall back."""


def _is_outage(err: StoreError) -> bool:
    """True when the store error means Redis is down or slower than the timeout. redis-py
    makes a rejected password a ConnectionError too; that one is a configuration error and
    is raised, not hidden behind the fallback."""
    cause = err.__cause__
    return (isinstance(cause, redis.ConnectionError | redis.TimeoutError)
            and not isinstance(cause, redis.AuthenticationError))


def _check_arch(arch: str) -> str:
    if arch not in ARCH_PARTS:
        raise InvalidRequest(f"arch must be 'A' or 'B', got {arch!r}")
    return arch


def _history_tensors(items: np.ndarray, cates: np.ndarray, lens: np.ndarray) -> dict:
    return {"hist_item_ids": np.asarray(items, np.int64),
            "hist_cate_ids": np.asarray(cates, np.int64),
            "hist_len": np.asarray(lens, np.int32).reshape(1)}


# Architecture A without behaviours: one padding column and length 0.
_EMPTY_HISTORY = _history_tensors(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1))


class Scorer:
    """Thread-safe per-request scorer; create one per process and reuse it.

    Args:
        model: "dien", "mimn" or "mlp".
        redis_url: the interest store; or pass `store` (an `InterestStore`) instead.
        server: model server "host:port" (gRPC port for grpc, REST port for rest).
        transport: "grpc" (default) or "rest".
        arch: "B" (state + head, default) or "A" (behaviours + full model).
        version: pin a model version instead of following the active pointer.
        deadline_ms: budget per `score()` call, Redis and RPC retries included.
        redis_timeout_ms: a Redis read slower than this counts as Redis down.
        retries: extra attempts on UNAVAILABLE.
        active_ttl_s: how long the active-version pointer is cached.
        history_length: L, behaviours read per request in architecture A.
        stale_after_s: a state not rewritten for this long is reported ``stale``.
        fallback: "cold_start" (degrade) or "error" when Redis is down or slow.
        redis_retry_after_s: after a Redis failure, skip Redis for this long.
        pool_size: maximum pooled Redis connections.
        namespace: the store's key prefix (with `redis_url`).
        tls: TLS to the model server (`TlsConfig`: CA, optional client certificate), or
            True for TLS verified against the system's trust store; None: plaintext.
        max_candidates: refuse larger requests before sending them (default 10,000, the
            model server's default --max_request_candidates).
    """

    def __init__(self, model: str = "dien", *, redis_url: str | None = None,
                 store: InterestStore | None = None, server: str = "127.0.0.1:8500",
                 transport: str = "grpc", arch: str = "B", version: int | None = None,
                 deadline_ms: float = 200.0, redis_timeout_ms: float = 50.0, retries: int = 2,
                 active_ttl_s: float = DEFAULT_POINTER_CACHE_S, history_length: int = 100,
                 stale_after_s: float = 3600.0, fallback: str = "cold_start",
                 redis_retry_after_s: float = 0.5, pool_size: int = 16,
                 namespace: str = DEFAULT_NAMESPACE, tls: TlsConfig | bool | None = None,
                 max_candidates: int = MAX_CANDIDATES):
        if model not in MODELS:
            raise InvalidRequest(f"model must be one of {list(MODELS)}, got {model!r}")
        _check_arch(arch)
        if fallback not in FALLBACKS:
            raise InvalidRequest(f"fallback must be one of {list(FALLBACKS)}, got {fallback!r}")
        if version is not None and (isinstance(version, bool) or int(version) <= 0):
            raise InvalidRequest(f"version must be a positive integer, got {version!r}")
        if history_length <= 0:
            raise InvalidRequest(f"history_length must be positive, got {history_length}")
        if not (0 < deadline_ms < math.inf and 0 < redis_timeout_ms < math.inf):
            raise InvalidRequest("deadline_ms and redis_timeout_ms must be positive numbers, "
                                 f"got {deadline_ms!r} and {redis_timeout_ms!r}")
        if isinstance(max_candidates, bool) or int(max_candidates) <= 0:
            raise InvalidRequest(f"max_candidates must be a positive integer, got "
                                 f"{max_candidates!r}")
        if tls is True:
            tls = TlsConfig()
        self.transport = make_transport(transport, server, retries=retries, tls=tls or None)
        self._owns_store = store is None
        if store is None:
            try:
                store = _fail_fast_store(redis_url, namespace, redis_timeout_ms / 1000.0,
                                         pool_size)
            except InvalidRequest:
                self.transport.close()
                raise
        self.model = model
        self.arch = arch
        self.store = store
        self.max_candidates = int(max_candidates)
        self.pinned_version = None if version is None else int(version)
        self.deadline_ms = float(deadline_ms)
        self.active_ttl_s = float(active_ttl_s)
        self.history_length = int(history_length)
        self.stale_after_ms = float(stale_after_s) * 1000.0
        self.fallback = fallback
        self.redis_retry_after_s = float(redis_retry_after_s)
        self._active: tuple[int, float] | None = None  # (version, expires at perf_counter)
        self._cold: dict[int, np.ndarray] = {}
        self._redis_down_until = 0.0
        self._lock = threading.Lock()

    # -- scoring ------------------------------------------------------------------------------
    def score(self, user_id: int, item_ids: Sequence[int] | np.ndarray,
              cate_ids: Sequence[int] | np.ndarray | None = None, *,
              arch: str | None = None, deadline_ms: float | None = None) -> ScoreResult:
        """Score `user_id` against the candidates (`cate_ids` default to 0, the unknown
        category). Raises `InvalidRequest` on bad input, `StateStoreUnavailable` /
        `NotDeployed` when Redis cannot serve, `ModelServerError` from the model server."""
        t_start = time.perf_counter()
        deadline = t_start + (deadline_ms or self.deadline_ms) / 1000.0
        arch = _check_arch(arch or self.arch)
        uid = check_user(user_id)
        items, cates = candidate_arrays(item_ids, cate_ids, self.max_candidates)

        served = serving_model_name(self.model, ARCH_PARTS[arch])
        candidates = padded_candidates(items, cates)
        for retry in (False, True):
            t_redis = time.perf_counter()
            version, redis_down = self._version()
            user = self._user_inputs(arch, version, uid, redis_down)

            t_build = time.perf_counter()
            request = self.transport.build(served, version, {**user.tensors, **candidates})

            t_call = time.perf_counter()
            try:
                scores, attempts = self.transport.call(request, deadline)
                break
            except ModelServerError as err:
                # NOT_FOUND for the version the pointer named: a roll-out or roll-back moved
                # on while our pointer was cached. Re-read the pointer once and score again
                # (with the state of that version, never mixing versions).
                if retry or err.code != "NOT_FOUND" or not self._expire_pointer(version):
                    raise
        t_end = time.perf_counter()
        sent = candidates["cand_item_ids"].shape
        if scores.shape != sent:
            raise ModelServerError("INTERNAL", f"{served} v{version} returned scores of shape "
                                   f"{list(scores.shape)} for candidates of shape {list(sent)}; "
                                   "is it an export of model contract version 2?",
                                   target=self.transport.target)
        return ScoreResult(
            scores=scores[0, : items.size], item_ids=items, cate_ids=cates, status=user.status,
            model=self.model, version=version, arch=arch, served_model=served,
            transport=self.transport.name, state_age_ms=user.age_ms,
            events_applied=user.events, redis_ms=(t_build - t_redis) * 1e3,
            build_ms=(t_call - t_build) * 1e3, rpc_ms=(t_end - t_call) * 1e3,
            total_ms=(t_end - t_start) * 1e3, attempts=attempts, reason=user.reason,
        )

    def _user_inputs(self, arch: str, version: int, uid: int,
                     redis_down: str | None) -> _UserInputs:
        """The user side of the request; the one place that falls back when Redis fails."""
        try:
            if redis_down is not None:  # the pointer refresh just failed: do not wait again
                raise _RedisDown(redis_down)
            if arch == "B":
                return self._state_inputs(version, uid)
            return self._behaviour_inputs(uid)
        except _RedisDown as err:
            return self._fallback_inputs(arch, version, str(err))

    def _state_inputs(self, version: int, uid: int) -> _UserInputs:
        """B: the user's state of `version`, or the version's cold-start state."""
        stored = self._redis(self.store.read_state, self.model, version, uid)
        if stored is None:
            return _UserInputs({"state": self._cold_start(version)}, ScoreStatus.COLD_START,
                               "no state for this user")
        age_ms = max(0.0, time.time() * 1000.0 - stored.write_time_ms)
        status = ScoreStatus.STALE if age_ms > self.stale_after_ms else ScoreStatus.FRESH
        return _UserInputs({"state": stored.state.reshape(1, -1)}, status, age_ms=age_ms,
                           events=stored.events_applied)

    def _behaviour_inputs(self, uid: int) -> _UserInputs:
        """A: the user's last `history_length` behaviours, trimmed to the real length (the
        padding is not sent)."""
        items, cates, lens = self._redis(self.store.read_behaviour_arrays, [uid],
                                         self.history_length)
        events = int(lens[0])
        if not events:
            return _UserInputs(_EMPTY_HISTORY, ScoreStatus.COLD_START,
                               "no behaviours for this user", events=0)
        return _UserInputs(_history_tensors(items[:, :events], cates[:, :events], lens),
                           ScoreStatus.FRESH, events=events)

    def _fallback_inputs(self, arch: str, version: int, why: str) -> _UserInputs:
        """Redis could not answer: the cached cold-start state (B) or an empty history (A),
        status ``degraded``; or StateStoreUnavailable with ``fallback="error"``."""
        if self.fallback == "error":
            raise StateStoreUnavailable(f"Redis is unreachable or slow ({why}); "
                                        "fallback is 'error'")
        if arch == "A":
            return _UserInputs(_EMPTY_HISTORY, ScoreStatus.DEGRADED, why)
        state = self._cold.get(version)
        if state is None:
            raise StateStoreUnavailable(
                f"Redis is unreachable or slow ({why}) and no cold-start state of "
                f"{self.model} version {version} is cached in the client yet")
        return _UserInputs({"state": state}, ScoreStatus.DEGRADED, why)

    # -- Redis -------------------------------------------------------------------------------
    def _redis(self, fn, *args):
        """Run one store call. Redis down or slow opens the breaker and raises _RedisDown
        (the caller falls back); a corrupt value raises _RedisDown without opening it; any
        other store error (wrong password, permissions, wrong key type) is raised as
        StateStoreUnavailable."""
        if time.perf_counter() < self._redis_down_until:
            raise _RedisDown("Redis marked down after a recent failure; retrying in "
                             f"<= {self.redis_retry_after_s:g} s")
        try:
            return fn(*args)
        except CorruptValue as err:
            raise _RedisDown(str(err)) from None
        except StoreError as err:
            if not _is_outage(err):
                raise StateStoreUnavailable(f"Redis error: {err}") from err
            self._redis_down_until = time.perf_counter() + self.redis_retry_after_s
            raise _RedisDown(f"{type(err.__cause__).__name__}: {err.__cause__}") from None

    def _version(self) -> tuple[int, str | None]:
        """(version to use, why Redis is down or None). The last known version keeps being
        served while Redis is down."""
        if self.pinned_version is not None:
            return self.pinned_version, None
        active = self._active
        if active is not None and time.perf_counter() < active[1]:
            return active[0], None
        try:
            version = self._redis(self.store.get_active_version, self.model)
        except _RedisDown as err:
            if active is not None:
                return active[0], str(err)
            raise StateStoreUnavailable(
                f"Redis is unreachable ({err}) and no active version of {self.model!r} is "
                "known yet; start Redis / check --redis_url, or pin --version") from None
        if version is None and active is not None:
            # The pointer vanished under a running client: Redis restarted without its data
            # (or was flushed). Keep serving the last known version, degraded to its cached
            # cold-start state, until the pointer is back.
            return active[0], (f"no active version of {self.model!r} in Redis any more "
                               "(restarted without its data?); serving the last known "
                               f"version {active[0]}")
        if version is None:
            raise NotDeployed(
                f"no active version of {self.model!r} in Redis (key "
                f"{self.store.active_key(self.model)}): run the backfill for a version and "
                "flip the pointer (InterestStore.set_active_version), or pin a version")
        self._active = (version, time.perf_counter() + self.active_ttl_s)
        if self.arch == "B" and version not in self._cold:
            try:  # prefetch, so a later Redis outage can still fall back to it
                self._cold_start(version)
            except (_RedisDown, NotDeployed):
                pass
        return version, None

    def _expire_pointer(self, version: int) -> bool:
        """After NOT_FOUND for `version`: forget the cached pointer if it still names it.
        True (retry once) unless the version was pinned: when another request already
        refreshed the pointer, the retry reads the new one from the cache."""
        if self.pinned_version is not None:
            return False
        active = self._active
        if active is not None and active[0] == version:
            self._active = (version, 0.0)
        return True

    def _cold_start(self, version: int) -> np.ndarray:
        """The cold-start state of `version`, [1, S]; read from Redis once, then cached."""
        state = self._cold.get(version)
        if state is None:
            state = self._redis(self.store.read_cold_start, self.model, version)
            if state is None:
                raise NotDeployed(
                    f"no cold-start state for {self.model} version {version} in Redis "
                    f"(key {self.store.cold_key(self.model, version)}): the backfill writes it "
                    "(InterestStore.write_cold_start)")
            state = np.asarray(state, dtype=np.float32).reshape(1, -1)
            with self._lock:
                self._cold[version] = state
        return state

    # -- lifetime -----------------------------------------------------------------------------
    def active_version(self) -> int:
        """The version the next `score()` will use (refreshing the cached pointer if due)."""
        return self._version()[0]

    def close(self) -> None:
        self.transport.close()
        if not self._owns_store:
            return
        try:
            self.store.client.close()
        except Exception:  # noqa: BLE001 - closing a client whose Redis is gone is fine
            pass

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fail_fast_store(redis_url: str | None, namespace: str, timeout_s: float,
                     pool_size: int) -> InterestStore:
    """A store whose reads give up after `timeout_s` with no retries inside redis-py: the
    scorer's fallback and breaker decide what happens next. Not checked now, so a scorer
    can start while Redis is down."""
    if redis_url is None:
        raise InvalidRequest(f"pass redis_url (e.g. {DEFAULT_REDIS_URL}) or store")
    config = StoreConfig(redis_url, namespace=namespace, socket_timeout_s=timeout_s,
                         connect_timeout_s=timeout_s, max_connections=pool_size, retries=0)
    try:
        return config.connect(check=False)
    except StoreError as err:  # a malformed URL or namespace
        raise InvalidRequest(str(err)) from None
