"""Beam jobs benchmark: backfill throughput and stream freshness, side by side in one run.

* backfill: users/s and events/s of `beam_jobs.backfill` (DirectRunner engine, in process,
  pipeline start-up and model load included) on synthetic histories;
* stream freshness: the stream job runs as a subprocess; events are pushed at 100 and at
  1,000 events/s, each to a user of its own, and freshness = the state's write time minus
  the moment its XADD returned (the state is readable from then on). Includes the
  `--coalesce_ms` window (20 ms) by design.

Everything (redis-server, exports, data, the stream job) is started and stopped here.
`python -m bench.beam [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = "dien"


def _export(root: Path, quick: bool) -> None:
    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    config = ModelConfig.tiny() if quick else ModelConfig()
    export_model(MODEL, root, 1, config=config, seed=1, parts=("tower", "step"))


def _bench_backfill(url: str, exports: Path, work: Path, users: int, per_user: int) -> dict:
    from beam_jobs.backfill import BackfillOptions, run_backfill
    from beam_jobs.produce import synthetic_payloads
    from uic.store import StoreConfig

    path = work / "events.jsonl"
    with path.open("w") as f:
        for line in synthetic_payloads(users * per_user, users=users, items=50_000,
                                       categories=500, seed=3, start_ms=1_500_000_000_000):
            f.write(line + "\n")
    res = run_backfill(BackfillOptions(model=MODEL, events=[str(path)],
                                       store=StoreConfig(url=url), saved_models=str(exports),
                                       version=1, dead_letter=str(work / "dead.jsonl")))
    n_users, n_events = res.totals.get("users", 0), res.totals.get("events", 0)
    return {"bench": "beam_backfill", "users": n_users, "events": n_events,
            "seconds": round(res.seconds, 2), "users_per_s": round(n_users / res.seconds, 1),
            "events_per_s": round(n_events / res.seconds, 1)}


def _wait_states(store, users: list[int], timeout: float) -> list:
    deadline = time.time() + timeout
    while True:
        states = store.read_states(MODEL, 1, users)
        if all(s is not None for s in states) or time.time() > deadline:
            return states
        time.sleep(0.05)


def _bench_freshness(store, rate: int, seconds: float, first_user: int) -> dict:
    from beam_jobs.produce import produce
    from uic.events import Event

    n = int(rate * seconds)
    users = list(range(first_user, first_user + n))
    now = int(time.time() * 1000)
    payloads = [Event(u, 1 + u % 5000, 1 + u % 97, "pv", now + i, f"bench-{u}").to_json()
                for i, u in enumerate(users)]
    sent_at = np.zeros(n)
    marks: list[tuple[int, float]] = []
    stats = produce(store, "bench:events", payloads, rate=rate, total=n, progress=False,
                    on_sent=lambda count, wall: marks.append((count, wall)))
    done = 0
    for count, wall in marks:
        sent_at[done:count] = wall * 1000.0
        done = count
    states = _wait_states(store, users, timeout=60)
    fresh = np.array([s.write_time_ms for s in states if s is not None]) - sent_at[
        [i for i, s in enumerate(states) if s is not None]]
    return {"bench": "beam_stream_freshness", "rate_eps": rate,
            "achieved_eps": round(stats["rate"], 1), "events": n,
            "updated": int(len(fresh)), "p50_ms": round(float(np.percentile(fresh, 50)), 1),
            "p99_ms": round(float(np.percentile(fresh, 99)), 1),
            "max_ms": round(float(fresh.max()), 1)}


def run(quick: bool = False) -> list[dict]:

    from devkit.redis_server import EmbeddedRedis
    from uic.store import connect as store_connect

    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_beam_") as tmp, EmbeddedRedis() as server:
        work = Path(tmp)
        exports = work / "exports"
        _export(exports, quick)
        store = store_connect(server.url)

        users, per_user = (300, 20) if quick else (5000, 50)
        records.append(_bench_backfill(server.url, exports, work, users, per_user))

        store.create_group("bench:events", "bench", "$")  # entries from now on
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
        job = subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.stream", "--model", MODEL, "--version", "1",
             "--saved_models", str(exports), "--redis_url", server.url,
             "--stream", "bench:events", "--group", "bench", "--start_id", "$",
             "--stop_after_seconds", "600"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # ready when a warm-up event has been applied
            warm = _bench_freshness(store, 20, 0.1, 10**9)
            if warm["updated"] == 0:
                raise RuntimeError("the stream job did not start: "
                                   + job.stderr.read().decode(errors="replace")[-2000:]
                                   if job.poll() is not None else "no update within 60 s")
            seconds = 2.5 if quick else 15.0
            for i, rate in enumerate((100, 1000)):
                records.append(_bench_freshness(store, rate, seconds, 10**7 * (i + 1)))
        finally:
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=20)
            except subprocess.TimeoutExpired:
                job.kill()
                job.wait()
            store.client.close()
    _print(records)
    return records


def _print(records: list[dict]) -> None:
    print("\nBeam jobs (DirectRunner engine, 2 cores shared)")
    for r in records:
        if r["bench"] == "beam_backfill":
            print(f"  backfill  {r['users']:>7,} users {r['events']:>9,} events  "
                  f"{r['seconds']:>6.1f} s  {r['users_per_s']:>9,.0f} users/s  "
                  f"{r['events_per_s']:>10,.0f} events/s")
        else:
            print(f"  stream    {r['rate_eps']:>5} ev/s (achieved {r['achieved_eps']:>7,.0f})  "
                  f"freshness p50 {r['p50_ms']:>7.1f} ms  p99 {r['p99_ms']:>7.1f} ms  "
                  f"max {r['max_ms']:>7.1f} ms  ({r['updated']}/{r['events']} updated)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.beam", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, short runs (< 1 min)")
    run(quick=parser.parse_args(argv).quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
