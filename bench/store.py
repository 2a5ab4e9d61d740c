"""Interest-store benchmark: state read/write latency on loopback and bytes per user.

Starts its own redis-server (devkit.redis_server), fills it with realistic state sizes
(S=4096 floats, DIEN-like: GRU state + ring buffer of 50 extractor states + sums; S=600,
MIMN-like) in fp32 and fp16, then measures side by side in one run:

* read of 1 user's state and of 100 users' states (one MGET), through `InterestStore`
  (includes decoding) and a plain GET/MGET of the same keys (the Redis floor);
* a CAS write of 1 state, and a pipelined CAS write of 100 states;
* bytes per user: raw value length and Redis `MEMORY USAGE` (value + key + overhead);
* for comparison, Architecture A's fetch: the last 1000 behaviours of 1 / 100 users.

Run: ``python -m bench.store [--quick]``.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from bench.report import percentiles_ms
from devkit.redis_server import EmbeddedRedis
from uic.events import Event
from uic.store import connect as store_connect

SIZES = (("dien_like", 4096), ("mimn_like", 600))


def _time_interleaved(fns: dict, repeats: int, warmup: int = 10) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return out


def _time(fn, repeats: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _bench_states(url: str, label: str, size: int, dtype: str, users: int, reps_1: int,
                  reps_100: int, rng: random.Random) -> list[dict]:
    store = store_connect(url, dtype=dtype)
    c = store.client
    model = f"{label}_{dtype}"
    gen = np.random.default_rng(size)
    for start in range(0, users, 500):
        rows = [(u, gen.standard_normal(size).astype(np.float32), 100, 1_700_000_000_000, f"ev-{u}")
                for u in range(start, min(users, start + 500))]
        store.write_states(model, 1, rows)
    keys = [store.state_key(model, 1, u) for u in range(users)]
    state = gen.standard_normal(size).astype(np.float32)
    counter = iter(range(10_000, 10**9))

    def read_one():
        store.read_states(model, 1, [rng.randrange(users)])

    def read_batch():
        store.read_states(model, 1, rng.sample(range(users), 100))

    def raw_one():
        c.get(keys[rng.randrange(users)])

    def raw_batch():
        c.mget(rng.sample(keys, 100))

    def write_one():
        n = next(counter)
        store.write_state(model, 1, rng.randrange(users), state, n, n, "w")

    def write_batch():
        n = next(counter)
        store.write_states(model, 1, [(u, state, n, n, "w") for u in rng.sample(range(users), 100)])

    common = {"state_size": size, "dtype": dtype, "users_stored": users}
    records = []
    # Interleaved: each repetition runs every function of a group once, so load from other
    # processes on the machine hits the compared functions alike.
    for group, reps in (({"read_1_user": read_one, "raw_get_1_user": raw_one,
                          "write_1_user_cas": write_one}, reps_1),
                        ({"read_100_users": read_batch, "raw_mget_100_users": raw_batch,
                          "write_100_users_cas": write_batch}, reps_100)):
        for name, samples in _time_interleaved(group, reps).items():
            records.append({"bench": f"store.{name}", **common, **percentiles_ms(samples)})
    sample = keys[:200]
    raw_len = [c.strlen(k) for k in sample]
    mem = [c.memory_usage(k, samples=0) for k in sample]
    records.append({"bench": "store.bytes_per_user", **common,
                    "value_bytes": int(np.mean(raw_len)),
                    "memory_usage_bytes": int(np.mean(mem)),
                    "overhead_bytes": int(np.mean(mem) - np.mean(raw_len))})
    c.close()
    return records


def run(quick: bool = False) -> list[dict]:
    users = 500 if quick else 10_000
    reps_1 = 200 if quick else 3000
    reps_100 = 40 if quick else 500
    rng = random.Random(0)
    records: list[dict] = []
    with EmbeddedRedis() as server:
        for label, size in SIZES:
            for dtype in ("fp32", "fp16"):
                records += _bench_states(server.url, label, size, dtype, users, reps_1,
                                         reps_100, rng)
        # Architecture A comparison: the raw behaviour list of the last 1000 events.
        store = store_connect(server.url)
        n_users = 100 if quick else 1000
        for start in range(0, n_users, 50):
            store.append_behaviours(
                (Event(user_id=u, item_id=rng.randrange(1, 5_000_000), category_id=rng.randrange(1, 9000),
                       behavior_type="pv", event_time_ms=1_700_000_000_000 + i * 1000,
                       event_id=f"{u}-{i:05d}")
                 for u in range(start, min(n_users, start + 50)) for i in range(1000)),
                cap=1000)
        for name, b, reps in (("behaviours_1_user_L1000", 1, reps_1 // 4),
                              ("behaviours_100_users_L1000", 100, max(5, reps_100 // 8))):
            fn = lambda b=b: store.read_behaviour_arrays(rng.sample(range(n_users), b), 1000)  # noqa: E731
            records.append({"bench": f"store.{name}", "state_size": 0, "dtype": "-",
                            "users_stored": n_users, **percentiles_ms(_time(fn, reps, warmup=5))})
        key = store.behaviour_key(0)
        records.append({"bench": "store.behaviour_bytes_per_user_L1000", "state_size": 0,
                        "dtype": "-", "users_stored": n_users,
                        "memory_usage_bytes": int(store.client.memory_usage(key, samples=0))})
    _add_ratios(records)
    _print(records)
    return records


def _add_ratios(records: list[dict]) -> None:
    by = {(r["bench"], r["state_size"], r["dtype"]): r for r in records}
    for _, size in SIZES:
        for dtype in ("fp32", "fp16"):
            one = by[("store.read_1_user", size, dtype)]
            hundred = by[("store.read_100_users", size, dtype)]
            raw = by[("store.raw_get_1_user", size, dtype)]
            hundred["ratio_vs_1_user_p50"] = round(hundred["p50_ms"] / one["p50_ms"], 2)
            raw100 = by[("store.raw_mget_100_users", size, dtype)]
            hundred["ratio_vs_raw_mget_p50"] = round(hundred["p50_ms"] / raw100["p50_ms"], 2)
            one["ratio_vs_raw_get_p50"] = round(one["p50_ms"] / raw["p50_ms"], 2)
        b32 = by[("store.bytes_per_user", size, "fp32")]
        b16 = by[("store.bytes_per_user", size, "fp16")]
        b16["ratio_vs_fp32"] = round(b16["memory_usage_bytes"] / b32["memory_usage_bytes"], 3)
    arch_a = by.get(("store.behaviours_1_user_L1000", 0, "-"))
    if arch_a:
        for _, size in SIZES:
            r = by[("store.read_1_user", size, "fp32")]
            r["ratio_vs_behaviours_L1000_p50"] = round(r["p50_ms"] / arch_a["p50_ms"], 3)


def _print(records: list[dict]) -> None:
    print(f"{'bench':40s} {'S':>5s} {'dtype':>5s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'bytes':>8s} {'mem':>8s}  ratios")
    for r in records:
        ratios = ", ".join(f"{k[6:]}={v}" for k, v in r.items() if k.startswith("ratio_"))
        print(f"{r['bench']:40s} {r['state_size']:>5d} {r['dtype']:>5s} "
              f"{r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8} "
              f"{r.get('value_bytes', ''):>8} {r.get('memory_usage_bytes', ''):>8}  {ratios}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.store",
                                description="Interest-store latency and size benchmark (own redis-server).")
    p.add_argument("--quick", action="store_true", help="fewer users and repeats (< 30 s)")
    args = p.parse_args(argv)
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
