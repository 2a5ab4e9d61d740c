"""Roll-out of a new version: backfill v+1 while v serves, flip only when v+1 is complete."""

from __future__ import annotations

import threading
import time

import numpy as np

from beam_jobs import rollout
from uic.store import connect as store_connect

from .conftest import histories, tower_states


def test_rollout_flips_pointer_only_after_v2_is_complete(redis_url, tiny_exports,
                                                         events_data, tmp_path):
    path, events = events_data
    hists = histories(events)
    users = sorted(hists)
    store = store_connect(redis_url)
    v1 = tower_states(tiny_exports, "dien", 1, hists)
    store.write_states("dien", 1, [(u, v1[u], len(h), *h[-1].sort_key)
                                   for u, h in hists.items()])
    store.set_active_version("dien", 1)

    seen: list[tuple[int | None, int]] = []  # (active version, v2 states present) samples
    stop = threading.Event()

    def watch():
        watcher = store_connect(redis_url)
        while not stop.is_set():
            active = watcher.get_active_version("dien")
            present = sum(s is not None for s in watcher.read_states("dien", 2, users))
            seen.append((active, present))
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        code = rollout.main(["--model", "dien", "--events", str(path), "--saved_models",
                             str(tiny_exports), "--redis_url", redis_url,
                             "--retention_seconds", "3600"])
    finally:
        stop.set()
        thread.join()
    assert code == 0
    assert store.get_active_version("dien") == 2
    assert any(a == 1 and p < len(users) for a, p in seen)  # v1 served while v2 was built
    assert all(p == len(users) for a, p in seen if a == 2)  # never flipped to a partial v2
    v2 = tower_states(tiny_exports, "dien", 2, hists)
    for user in users:
        np.testing.assert_allclose(store.read_state("dien", 2, user).state, v2[user], atol=1e-5)
    # v1 stays for the retention period (instant roll-back), then --cleanup removes it
    assert store.read_state("dien", 1, users[0]) is not None
    assert rollout.cleanup(store, "dien") == []
    assert rollout.cleanup(store, "dien", now_ms=int(time.time() * 1000) + 3_601_000) == [1]
    assert all(s is None for s in store.read_states("dien", 1, users))
    assert all(s is not None for s in store.read_states("dien", 2, users))
    # already active: nothing to do
    assert rollout.main(["--model", "dien", "--events", str(path), "--saved_models",
                         str(tiny_exports), "--redis_url", redis_url]) == 0


def test_rollout_failure_keeps_old_version(redis_url, tiny_exports, tmp_path, capsys):
    store = store_connect(redis_url)
    store.set_active_version("dien", 1)
    code = rollout.main(["--model", "dien", "--events", str(tmp_path / "nope.jsonl"),
                         "--saved_models", str(tiny_exports), "--redis_url", redis_url])
    assert code == 2 and "matched no files" in capsys.readouterr().err
    assert store.get_active_version("dien") == 1
    assert rollout.main(["--model", "dien", "--saved_models", str(tiny_exports),
                         "--redis_url", redis_url]) == 2
    assert "--events is required" in capsys.readouterr().err
