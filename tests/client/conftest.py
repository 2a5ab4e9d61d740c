"""Fixtures for the client tests: expected scores computed in-process with the exported
SavedModels (tf.saved_model.load), real model servers, and a function to seed Redis (states
written with the store, behaviours too).

The servers are session-scoped and start in background threads while the expected scores
are computed, so their start-up (TensorFlow import, SavedModel loads, warm-up) overlaps.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.fixtures_server import start_model_server
from uic.contract import SIGNATURE_NAME, export_dir, serving_model_name
from uic.events import Event
from uic.store import InterestStore
from uic.store import connect as store_connect

MODELS = ("dien", "mimn")
VERSIONS = (1, 2)
# user -> history length (oldest first); user 14 has no history at all (unknown user)
HISTORY_LENGTHS = {11: 23, 12: 7, 13: 1}
UNKNOWN_USER = 14
CAND_ITEMS = np.array([5, 17, 230, 999, 4242, 17, 123456789012], dtype=np.int64)
CAND_CATES = np.array([1, 3, 3, 9, 60, 2, 7], dtype=np.int64)
T0_MS = 1_700_000_000_000
# Loading eight servables while TensorFlow computes the expected scores takes minutes on a
# busy two-core machine; a server that never comes up still fails the session.
SERVER_START_S = 600


def history(user: int) -> tuple[np.ndarray, np.ndarray, list[Event]]:
    rng = np.random.default_rng(user)
    n = HISTORY_LENGTHS.get(user, 0)
    items = rng.integers(1, 3000, n).astype(np.int64)
    cates = rng.integers(1, 80, n).astype(np.int64)
    events = [Event(user_id=user, item_id=int(i), category_id=int(c), behavior_type="pv",
                    event_time_ms=T0_MS + 1000 * k, event_id=f"e-{user}-{k:03d}")
              for k, (i, c) in enumerate(zip(items, cates, strict=True))]
    return items, cates, events


@dataclasses.dataclass
class Expected:
    states: dict        # (model, version, user) -> float32 [S]
    cold: dict          # (model, version) -> float32 [S]
    scores: dict        # (model, version, user) -> full model called directly, float32 [N]
    cold_scores: dict   # (model, version) -> full model on an empty history


@pytest.fixture(scope="session")
def _servers(tiny_exports, tmp_path_factory):
    """Start, in the background: "main" with `<model>_head` and `<model>_full`, versions 1
    and 2 of each; "small" with dien_head (latest version only), which a test stops."""
    import tensorflow  # noqa: F401  - import once here, not concurrently in the threads
    from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: F401

    models = {serving_model_name(m, p): {"base_path": tiny_exports / serving_model_name(m, p),
                                         "policy": "all"}
              for m in MODELS for p in ("head", "full")}
    # version 1 of the tiny exports is XLA-compiled: the server runs it only with the flag,
    # as TF Serving does
    xla = ("--xla_cpu_compilation_enabled=true",)
    pool = ThreadPoolExecutor(2, thread_name_prefix="model-server-start")
    futures = {
        "main": pool.submit(start_model_server, models, xla,
                            tmp_path_factory.mktemp("server_main"), SERVER_START_S),
        "small": pool.submit(start_model_server, {"dien_head": tiny_exports / "dien_head"}, xla,
                             tmp_path_factory.mktemp("server_small"), SERVER_START_S),
    }
    yield futures
    pool.shutdown(wait=True)
    for future in futures.values():
        if future.exception() is None:
            future.result().stop()


@pytest.fixture(scope="session")
def server(_servers, expected):
    return _servers["main"].result()


@pytest.fixture(scope="session")
def small_server(_servers, expected):
    return _servers["small"].result()


@pytest.fixture(scope="session")
def expected(tiny_exports, _servers) -> Expected:
    import tensorflow as tf

    def fn(model, part, version):
        loaded = tf.saved_model.load(str(export_dir(tiny_exports, model, part, version)))
        return loaded, loaded.signatures[SIGNATURE_NAME]

    out = Expected({}, {}, {}, {})
    keep = []  # keep loaded objects alive while their signatures are used
    # one user, its candidates as one row (contract version 2), not padded
    cands = {"cand_item_ids": tf.constant(CAND_ITEMS[None]),
             "cand_cate_ids": tf.constant(CAND_CATES[None])}
    for model in MODELS:
        for version in VERSIONS:
            parts = {p: fn(model, p, version) for p in ("tower", "full")}
            keep.append(parts)
            tower, full = parts["tower"][1], parts["full"][1]
            for user in [*HISTORY_LENGTHS, UNKNOWN_USER]:
                items, cates, _ = history(user)
                width = max(len(items), 1)
                hist = {"hist_item_ids": tf.constant(np.pad(items, (0, width - len(items)))[None]),
                        "hist_cate_ids": tf.constant(np.pad(cates, (0, width - len(cates)))[None]),
                        "hist_len": tf.constant([len(items)], tf.int32)}
                state = tower(**hist)["state"].numpy()[0]
                scores = full(**hist, **cands)["ctr"].numpy()[0]
                if user == UNKNOWN_USER:
                    out.cold[(model, version)] = state
                    out.cold_scores[(model, version)] = scores
                else:
                    out.states[(model, version, user)] = state
                    out.scores[(model, version, user)] = scores
    return out


def seed(store: InterestStore, expected: Expected, active: int = 1) -> None:
    """Write every user's state (both versions), the cold-start states, the behaviours and
    the active-version pointer, as the Beam jobs would."""
    for (model, version, user), state in expected.states.items():
        _, _, events = history(user)
        assert store.write_state(model, version, user, state, len(events),
                                 events[-1].event_time_ms, events[-1].event_id)
    for (model, version), state in expected.cold.items():
        store.write_cold_start(model, version, state)
    for user in HISTORY_LENGTHS:
        store.append_behaviours(history(user)[2])
    for model in MODELS:
        store.set_active_version(model, active)


@pytest.fixture
def seeded_store(redis_url, expected) -> InterestStore:
    store = store_connect(redis_url)
    seed(store, expected)
    yield store
    store.client.close()
