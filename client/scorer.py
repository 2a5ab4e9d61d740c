"""Score one user against N candidates: the per-request path of a ranking service.

Architecture B (UIC, default): read the user's interest state for the active model version
from Redis (one GET), call `<model>_head` pinned to that version with the state and the
candidates. Architecture A (baseline): read the user's last L behaviours from the behaviour
list, call `<model>_full` pinned to the active version.

Why it is built this way:
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
import threading
import time
from collections.abc import Sequence

import numpy as np
import redis

from client.errors import InvalidRequest, ModelServerError, NotDeployed, StateStoreUnavailable
from client.transport import make_transport
from uic.contract import MODELS, serving_model_name
from uic.store import CorruptValue, InterestStore, StoreConfig, StoreError

INT64_MAX = 2**63 - 1
ARCHS = ("A", "B")
FALLBACKS = ("cold_start", "error")
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)  # incl. socket timeouts


class ScoreStatus(enum.StrEnum):
    FRESH = "fresh"            # the user's own state (B) / behaviours (A), recently updated
    STALE = "stale"            # the user's own state, but not updated for `stale_after_s`
    COLD_START = "cold_start"  # unknown user: the version's cold-start state / empty history
    DEGRADED = "degraded"      # Redis unreachable or slow: cold-start fallback


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


class _RedisDown(Exception):
    pass


def _check_user(user_id) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int | np.integer):
        raise InvalidRequest(f"user_id must be an integer in [0, 2^63-1], got "
                             f"{type(user_id).__name__} {user_id!r}")
    if not 0 <= int(user_id) <= INT64_MAX:
        raise InvalidRequest(f"user_id must be in [0, 2^63-1], got {user_id}")
    return int(user_id)


def _id_array(values, what: str) -> np.ndarray:
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
    """

    def __init__(self, model: str = "dien", *, redis_url: str | None = None,
                 store: InterestStore | None = None, server: str = "127.0.0.1:8500",
                 transport: str = "grpc", arch: str = "B", version: int | None = None,
                 deadline_ms: float = 200.0, redis_timeout_ms: float = 50.0, retries: int = 2,
                 active_ttl_s: float = 1.0, history_length: int = 100,
                 stale_after_s: float = 3600.0, fallback: str = "cold_start",
                 redis_retry_after_s: float = 0.5, pool_size: int = 16,
                 namespace: str = "uic"):
        if model not in MODELS:
            raise InvalidRequest(f"model must be one of {list(MODELS)}, got {model!r}")
        if arch not in ARCHS:
            raise InvalidRequest(f"arch must be 'A' or 'B', got {arch!r}")
        if fallback not in FALLBACKS:
            raise InvalidRequest(f"fallback must be one of {list(FALLBACKS)}, got {fallback!r}")
        if version is not None and (isinstance(version, bool) or int(version) <= 0):
            raise InvalidRequest(f"version must be a positive integer, got {version!r}")
        if history_length <= 0:
            raise InvalidRequest(f"history_length must be positive, got {history_length}")
        if deadline_ms <= 0 or redis_timeout_ms <= 0:
            raise InvalidRequest("deadline_ms and redis_timeout_ms must be positive")
        self._owns_store = store is None
        if store is None:
            if redis_url is None:
                raise InvalidRequest("pass redis_url (e.g. redis://127.0.0.1:6390/0) or store")
            timeout_s = redis_timeout_ms / 1000.0
            store = StoreConfig(redis_url, namespace=namespace, socket_timeout_s=timeout_s,
                                connect_timeout_s=timeout_s, max_connections=pool_size,
                                retries=0).connect(check=False)
        self.model = model
        self.arch = arch
        self.store = store
        self.transport = make_transport(transport, server, retries=retries)
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

    # -- Redis -------------------------------------------------------------------------------
    def _redis(self, fn, *args):
        """Run one store call. A connection error or timeout opens the breaker and raises
        _RedisDown (the caller falls back); a corrupt value raises _RedisDown without
        opening it; any other store error (bad password, wrong server) is raised as is."""
        if time.perf_counter() < self._redis_down_until:
            raise _RedisDown("Redis marked down after a recent failure; retrying in "
                             f"<= {self.redis_retry_after_s:g} s")
        try:
            return fn(*args)
        except CorruptValue as err:
            raise _RedisDown(str(err)) from None
        except (StoreError, *_REDIS_DOWN) as err:
            cause = err if isinstance(err, _REDIS_DOWN) else err.__cause__
            if not isinstance(cause, _REDIS_DOWN):
                raise StateStoreUnavailable(f"Redis error: {err}") from err
            self._redis_down_until = time.perf_counter() + self.redis_retry_after_s
            raise _RedisDown(f"{type(cause).__name__}: {cause}") from None

    def _version(self) -> tuple[int, str | None]:
        """(version to use, degradation reason or None)."""
        if self.pinned_version is not None:
            return self.pinned_version, None
        now = time.perf_counter()
        active = self._active
        if active is not None and now < active[1]:
            return active[0], None
        try:
            version = self._redis(self.store.get_active_version, self.model)
        except _RedisDown as err:
            if active is not None:  # keep serving the last known version
                return active[0], str(err)
            raise StateStoreUnavailable(
                f"Redis is unreachable ({err}) and no active version of {self.model!r} is "
                "known yet; start Redis / check --redis_url, or pin --version") from None
        if version is None:
            raise NotDeployed(
                f"no active version of {self.model!r} in Redis (key {self.store.active_key(self.model)}):"
                " run the backfill for a version and flip the pointer "
                "(InterestStore.set_active_version), or pin a version")
        self._active = (int(version), time.perf_counter() + self.active_ttl_s)
        if self.arch == "B" and int(version) not in self._cold:
            try:  # prefetch, so a later Redis outage can still fall back to it
                self._cold_start(int(version))
            except (_RedisDown, NotDeployed):
                pass
        return int(version), None

    def _cold_start(self, version: int) -> np.ndarray:
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

    def _fallback_state(self, version: int, why: str) -> np.ndarray:
        if self.fallback == "error":
            raise StateStoreUnavailable(f"Redis is unreachable or slow ({why}); "
                                        "fallback is 'error'")
        state = self._cold.get(version)
        if state is None:
            raise StateStoreUnavailable(
                f"Redis is unreachable or slow ({why}) and no cold-start state of "
                f"{self.model} version {version} is cached in the client yet")
        return state

    # -- scoring ------------------------------------------------------------------------------
    def score(self, user_id: int, item_ids: Sequence[int] | np.ndarray,
              cate_ids: Sequence[int] | np.ndarray | None = None, *,
              arch: str | None = None, deadline_ms: float | None = None) -> ScoreResult:
        """Score `user_id` against the candidates (`cate_ids` default to 0, the unknown
        category). Raises `InvalidRequest` on bad input, `StateStoreUnavailable` /
        `NotDeployed` when Redis cannot serve, `ModelServerError` from the model server."""
        t_start = time.perf_counter()
        deadline = t_start + (deadline_ms or self.deadline_ms) / 1000.0
        arch = arch or self.arch
        if arch not in ARCHS:
            raise InvalidRequest(f"arch must be 'A' or 'B', got {arch!r}")
        uid = _check_user(user_id)
        items = _id_array(item_ids, "item_ids")
        if cate_ids is None:
            cates = np.zeros_like(items)
        else:
            cates = _id_array(cate_ids, "cate_ids")
            if cates.shape != items.shape:
                raise InvalidRequest(f"got {items.size} item_ids but {cates.size} cate_ids: "
                                     "give one category per candidate")

        t0 = time.perf_counter()
        version, reason = self._version()
        age_ms = events = None
        if arch == "B":
            served = serving_model_name(self.model, "head")
            try:
                if reason is not None:
                    raise _RedisDown(reason)
                stored = self._redis(self.store.read_state, self.model, version, uid)
            except _RedisDown as err:
                reason = str(err)
                state, status = self._fallback_state(version, reason), ScoreStatus.DEGRADED
            else:
                if stored is None:
                    try:
                        state = self._cold_start(version)
                        status, reason = ScoreStatus.COLD_START, "no state for this user"
                    except _RedisDown as err:
                        reason = str(err)
                        state, status = self._fallback_state(version, reason), ScoreStatus.DEGRADED
                else:
                    state = stored.state.reshape(1, -1)
                    age_ms = max(0.0, time.time() * 1000.0 - stored.write_time_ms)
                    events = stored.events_applied
                    status = ScoreStatus.STALE if age_ms > self.stale_after_ms else ScoreStatus.FRESH
            t1 = time.perf_counter()
            inputs = {"state": state, "cand_item_ids": items, "cand_cate_ids": cates}
        else:
            served = serving_model_name(self.model, "full")
            try:
                if reason is not None:
                    raise _RedisDown(reason)
                hist_items, hist_cates, lens = self._redis(
                    self.store.read_behaviour_arrays, [uid], self.history_length)
            except _RedisDown as err:
                if self.fallback == "error":
                    raise StateStoreUnavailable(f"Redis is unreachable or slow ({err}); "
                                                "fallback is 'error'") from None
                reason, status = str(err), ScoreStatus.DEGRADED
                hist_items = hist_cates = np.zeros((1, 1), np.int64)
                lens = np.zeros(1, np.int32)
            else:
                events = int(lens[0])
                status = ScoreStatus.FRESH if events else ScoreStatus.COLD_START
                if not events:
                    reason = "no behaviours for this user"
                width = max(events, 1)  # send the real history, not the padding
                hist_items, hist_cates = hist_items[:, :width], hist_cates[:, :width]
            t1 = time.perf_counter()
            inputs = {"hist_item_ids": np.asarray(hist_items, np.int64),
                      "hist_cate_ids": np.asarray(hist_cates, np.int64),
                      "hist_len": np.asarray(lens, np.int32).reshape(1),
                      "cand_item_ids": items, "cand_cate_ids": cates}

        request = self.transport.build(served, version, inputs)
        t2 = time.perf_counter()
        scores, attempts = self.transport.call(request, deadline)
        t3 = time.perf_counter()
        if scores.shape != items.shape:
            raise ModelServerError("INTERNAL", f"{served} v{version} returned "
                                   f"{scores.size} scores for {items.size} candidates",
                                   target=self.transport.target)
        return ScoreResult(
            scores=scores, item_ids=items, cate_ids=cates, status=status, model=self.model,
            version=version, arch=arch, served_model=served, transport=self.transport.name,
            state_age_ms=age_ms, events_applied=events,
            redis_ms=(t1 - t0) * 1e3, build_ms=(t2 - t1) * 1e3, rpc_ms=(t3 - t2) * 1e3,
            total_ms=(t3 - t_start) * 1e3, attempts=attempts, reason=reason,
        )

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
