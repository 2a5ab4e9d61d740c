"""A roll-out to v2 and a roll-back to v1 while clients score at 200 QPS: no request fails
and no answer mixes a state of one version with a head of another.

Real parts: redis-server, the model server (subprocess) serving `dien_head`, the roll-out
CLI (Beam backfill, GetModelStatus check, flip script), `client.Scorer`. Two
hazards are staged on purpose: the v2 head reaches the model server only after the backfill
finished (the roll-out must wait for it before flipping), and right after the roll-back the
v2 head is withdrawn from the server while clients still cache the v2 pointer (they must re-read the
pointer on NOT_FOUND), and v2's states are deleted (`--retention_seconds 0`: only after
every cached pointer expired).
"""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from beam_jobs import rollout
from beam_jobs.rollout import check_model_server
from client import Scorer
from client.candidates import padded_candidates
from uic import contract
from uic.store import connect as store_connect

from .conftest import histories, make_events, tower_states, write_jsonl

QPS = 200
POINTER_CACHE_S = 2.0  # the clients' pointer cache; wide, so the NOT_FOUND window is certain
ITEMS = np.array([11, 12, 13, 14, 15], np.int64)
CATES = np.array([1, 2, 3, 1, 2], np.int64)


@pytest.fixture(scope="module")
def served(tiny_exports, tmp_path_factory, model_server_factory):
    """(model server, its dien_head base path): serves head v1 only, polls every 0.5 s."""
    base = tmp_path_factory.mktemp("served") / "dien_head"
    shutil.copytree(contract.export_dir(tiny_exports, "dien", "head", 1), base / "1")
    server = model_server_factory({"dien_head": {"base_path": base, "policy": 2}},
                                  ["--file_system_poll_wait_seconds=0.5"])
    return server, base


class PacedLoad:
    """Scores users through `scorer` at a fixed rate from a thread pool (open loop: request i
    starts at t0 + i / qps whatever the answers do); keeps every answer and every failure."""

    def __init__(self, scorer: Scorer, users: list[int], qps: float = QPS):
        self.scorer, self.users, self.qps = scorer, users, qps
        self.answers: list[tuple[int, object]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(16)
        self._thread = threading.Thread(target=self._pace, daemon=True)

    def _one(self, user: int) -> None:
        try:
            self.answers.append((user, self.scorer.score(user, ITEMS, CATES)))
        except Exception as err:  # noqa: BLE001 - every failure is what the test counts
            self.failures.append(f"user {user}: {type(err).__name__}: {err}")

    def _pace(self) -> None:
        t0, i = time.perf_counter(), 0
        while not self._stop.is_set():
            delay = t0 + i / self.qps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._pool.submit(self._one, self.users[i % len(self.users)])
            i += 1

    def __enter__(self) -> PacedLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def versions_seen(self) -> list[int]:
        return [result.version for _, result in self.answers]


def _rollout_cli(*args: str) -> Future:
    """`python -m beam_jobs.rollout --model dien ARGS` in a thread of this process (TF is
    loaded here already; a child process would pay for its import again)."""
    return ThreadPoolExecutor(1).submit(rollout.main, ["--model", "dien", *args])


def _finish(run: Future, what: str) -> None:
    assert run.result(timeout=300) == 0, f"{what} failed"


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _head_state(server) -> str:
    """What GetModelStatus says about dien_head v2 now (raises once it is AVAILABLE)."""
    from beam_jobs.common import JobError

    try:
        check_model_server(server.grpc_target, "dien", 2, wait_s=0)
    except JobError as err:
        return str(err)
    return "AVAILABLE"


def _expected_scores(exports: Path, hists) -> dict[tuple[int, int], np.ndarray]:
    """(version, user) -> the head of that version on the tower state of that version."""
    from beam_jobs.model_handler import LoadedSignature

    cands = padded_candidates(ITEMS, CATES)
    out = {}
    for version in (1, 2):
        head = LoadedSignature(contract.export_dir(exports, "dien", "head", version), "head")
        for user, state in tower_states(exports, "dien", version, hists).items():
            out[(version, user)] = head({"state": state.reshape(1, -1), **cands})[0, :ITEMS.size]
    return out


def test_rollout_and_rollback_under_200_qps(redis_url, tiny_exports, served, tmp_path,
                                            capsys):
    server, base = served
    events = make_events(seed=11, n=120, users=10)
    hists = histories(events)
    users = sorted(hists)
    logs = write_jsonl(tmp_path / "logs.jsonl", events)
    store = store_connect(redis_url)
    v1 = tower_states(tiny_exports, "dien", 1, hists)
    store.write_states("dien", 1, [(u, v1[u], len(h), *h[-1].sort_key) for u, h in hists.items()])
    store.write_cold_start("dien", 1, tower_states(tiny_exports, "dien", 1, {0: []})[0])
    store.set_active_version("dien", 1)  # first deployment
    common = ["--redis_url", redis_url, "--model_server", server.grpc_target,
              "--model_server_wait_seconds", "90", "--pointer_cache_seconds",
              str(POINTER_CACHE_S)]

    with Scorer("dien", redis_url=redis_url, server=server.grpc_target, deadline_ms=20_000,
                redis_timeout_ms=5_000, active_ttl_s=POINTER_CACHE_S) as scorer, \
            PacedLoad(scorer, users) as load:
        roll_out = _rollout_cli("--events", str(logs), "--saved_models", str(tiny_exports),
                               "--version", "2", "--retention_seconds", "3600", *common)
        # the v2 head lands on the model server only once the backfill is complete
        _wait_for(lambda: 2 in store.complete_versions("dien") or roll_out.done(),
                  "the v2 backfill")
        shutil.copytree(contract.export_dir(tiny_exports, "dien", "head", 2), base / "2")
        _finish(roll_out, "the roll-out")
        assert store.get_active_version("dien") == 2
        rolled_out = capsys.readouterr().out
        _wait_for(lambda: load.versions_seen().count(2) >= 100, "answers from v2")

        rollback = _rollout_cli("--rollback_to", "1", "--retention_seconds", "0", *common)
        _wait_for(lambda: store.get_active_version("dien") == 1, "the roll-back's flip")
        # withdraw the v2 head (the server drops it within its 0.5 s poll) while clients
        # still cache the v2 pointer for up to POINTER_CACHE_S
        shutil.rmtree(base / "2")
        _wait_for(lambda: "state END" in _head_state(server), "the server to drop head v2")
        _finish(rollback, "the roll-back")
        served_before = len(load.answers)
        _wait_for(lambda: len(load.answers) >= served_before + 100, "answers after it")

    assert load.failures == [], f"{len(load.failures)} failed, e.g. {load.failures[:3]}"
    assert "dien_head v2 AVAILABLE" in rolled_out  # the roll-out waited for the late head
    assert store.read_states("dien", 2, users) == [None] * len(users)  # retention 0 ran
    seen = load.versions_seen()
    assert seen.count(1) >= 100 and seen.count(2) >= 100 and seen[-1] == 1
    expected = _expected_scores(tiny_exports, hists)
    for user, result in load.answers:
        assert result.status.value in ("fresh", "stale"), (user, result.status, result.reason)
        np.testing.assert_allclose(result.scores, expected[(result.version, user)],
                                   rtol=1e-4, atol=1e-5,
                                   err_msg=f"user {user} answered by v{result.version}")


def test_model_server_check_refuses_a_version_it_does_not_serve(served):
    from beam_jobs.common import JobError

    server, _ = served
    with pytest.raises(JobError, match=r"does not serve dien_head v7 AVAILABLE .* Export "
                                       r"version 7 of dien_head"):
        check_model_server(server.grpc_target, "dien", 7, wait_s=0.5, poll_s=0.2)
    lines = check_model_server(server.grpc_target, "dien", 1, wait_s=5)
    assert lines[0].startswith("dien_head v1 AVAILABLE")
    assert "dien_full: not served" in lines[1]  # not configured here: fine, and said so
