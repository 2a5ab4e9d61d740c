"""Architecture A against Architecture B through the real stack: cost and capacity.

Set-up (once per run): paper-size DIEN and MIMN exports (weights do not change the cost), an
embedded Redis, and the model server hosting `dien_full`, `dien_head` and `mimn_head`. For
every history length L, `users_per_len` users get L random behaviours in the behaviour log
(what A reads) and the state the exported `tower` computes from them (what B reads). The
load generator (bench.loadgen, its own process) calls the project's client (`client.Scorer`)
for random users of that L with 100 candidates:
  A  dien: read the last L behaviours from Redis, call `dien_full`;
  B  dien / mimn: read the state from Redis, call `<model>_head`.

Two phases, both in interleaved order (every L and architecture in turn, never one
architecture's cells back to back), each cell after a cool-down that waits for the model
server to go idle:

1. Cost: one unsaturated cell per (arch, model, L) at a low fixed rate; the model server's
   CPU time over the cell divided by the requests answered is the CPU-ms per request, set
   against the request's FLOPs (bench.flops).
2. Capacity: for each (arch, model, L), a stepped search (bench.capacity) for the highest
   offered rate whose p99 over all scheduled requests stays within each SLO (10 and 30 ms)
   with under 1 % failures (bench.latency).

The A/B figures are ratios of those costs and capacities, never of a saturated queue's delay.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.capacity import SearchPlan, capacity, next_rate
from bench.cpu import ProcessCpu, wait_until_idle
from bench.flops import request_flops
from bench.latency import cell_stats, meets_slo
from bench.loadgen import LoadGenerator
from bench.report import markdown_table

CANDIDATES = 100
SEQ_LENS = (50, 200, 1000)
SLOS_MS = (10.0, 30.0)
PLAN = (("A", "dien"), ("B", "dien"), ("B", "mimn"))
ITEM_RANGE = (1, 5_000_000)
CATE_RANGE = (1, 500)
# Extra model-server flags for the load test. TF's default thread pools measured better than
# --tensorflow_intra_op_parallelism=1 here.
SERVER_ARGS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """How long and how wide the run is; `FULL` fits `make bench` on 2 cores."""

    seq_lens: tuple[int, ...] = SEQ_LENS
    users_per_len: int = 200
    cell_s: float = 4.0  # capacity cells last cell_s, longer at low rates ...
    min_requests: int = 250  # ... so that p99 rests on at least this many requests
    max_cell_s: float = 8.0
    cost_qps: float = 10.0  # low enough that A at L = 1000 is not saturated on 2 cores
    cost_s: float = 8.0
    timeout_s: float = 1.0
    search: SearchPlan = field(default_factory=SearchPlan)

    def cell_seconds(self, qps: float) -> float:
        return min(max(self.cell_s, self.min_requests / qps), self.max_cell_s)


FULL = Profile()
QUICK = Profile(seq_lens=(50, 1000), users_per_len=30, cell_s=1.5, min_requests=60,
                max_cell_s=3.0, cost_s=3.0, timeout_s=0.5,
                search=SearchPlan(start=50.0, factor=2.0, resolution=1.5, min_rate=12.5,
                                  max_rate=400.0))


def _make_call(model: str, arch: str, redis_url: str, server: str, seq_len: int,
               user_ids: list[int], seed: int):
    """Build, in the load-generator process, the per-request callable for one series."""
    from client import Scorer

    scorer = Scorer(model, redis_url=redis_url, server=server, arch=arch,
                    history_length=max(seq_len, 1), deadline_ms=30_000,
                    redis_timeout_ms=2_000, pool_size=64, fallback="error")
    rng = np.random.default_rng(seed)
    # A fixed pool of candidate lists, so that request building is the client's cost only.
    pool = [(rng.integers(*ITEM_RANGE, CANDIDATES), rng.integers(*CATE_RANGE, CANDIDATES))
            for _ in range(64)]

    def call(i: int, remaining_ms: float) -> None:
        items, cates = pool[i % len(pool)]
        result = scorer.score(user_ids[i % len(user_ids)], items, cates,
                              deadline_ms=remaining_ms)
        if result.status.value not in ("fresh", "stale"):
            raise RuntimeError(f"unexpected status {result.status.value}: {result.reason}")

    return call


def _current_export(path) -> bool:
    """True when `path` holds an export of this code's model contract (a reused workdir may
    hold an older one, which is then exported again)."""
    from uic.contract import ExportMetadata

    try:
        ExportMetadata.read(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def prepare(workdir: Path, redis_url: str, seq_lens, users_per_len: int, seed: int = 0,
            models=("dien", "mimn"), config=None, full_models=("dien",)) -> dict[int, list[int]]:
    """Export the models (version 1; `config` a ModelConfig, default the papers' sizes) and
    fill Redis: behaviour logs and tower states. Returns the user ids per L."""
    import tensorflow as tf

    from tf_models.export import export_model
    from uic.contract import export_dir
    from uic.events import Event
    from uic.store import connect as store_connect

    for model in models:
        if not _current_export(export_dir(workdir / "saved_models", model, "head", 1)):
            parts = ("tower", "head", "full") if model in full_models else ("tower", "head")
            export_model(model, workdir / "saved_models", 1, seed=seed, config=config,
                         parts=parts)
    store = store_connect(redis_url)
    rng = np.random.default_rng(seed)
    users: dict[int, list[int]] = {}
    towers = {m: tf.saved_model.load(str(export_dir(workdir / "saved_models", m, "tower", 1)))
              .signatures["serving_default"] for m in models}
    for seq_len in seq_lens:
        ids = [seq_len * 1_000_000 + u for u in range(users_per_len)]
        users[seq_len] = ids
        items = rng.integers(*ITEM_RANGE, (users_per_len, seq_len))
        cates = rng.integers(*CATE_RANGE, (users_per_len, seq_len))
        t0 = 1_700_000_000_000
        for row, uid in enumerate(ids):
            store.append_behaviours(
                (Event(uid, int(items[row, j]), int(cates[row, j]), "pv", t0 + j * 1000,
                       f"b{uid}-{j}") for j in range(seq_len)), cap=max(max(SEQ_LENS), max(seq_lens)))
        lens = np.full((users_per_len,), seq_len, np.int32)
        for model in models:
            states = []
            for start in range(0, users_per_len, 50):
                out = towers[model](hist_item_ids=tf.constant(items[start:start + 50]),
                                    hist_cate_ids=tf.constant(cates[start:start + 50]),
                                    hist_len=tf.constant(lens[start:start + 50]))
                states.append(out["state"].numpy())
            states = np.concatenate(states)
            store.write_states(model, 1, [
                (uid, states[row], seq_len, t0 + (seq_len - 1) * 1000, f"b{uid}-{seq_len - 1}")
                for row, uid in enumerate(ids)])
            store.set_active_version(model, 1)
    return users


class Runner:
    """Runs cells against one model server through one load generator."""

    def __init__(self, generator: LoadGenerator, server_pid: int, redis_url: str,
                 grpc_target: str, users: dict[int, list[int]], configs: dict[str, dict],
                 profile: Profile):
        self.generator = generator
        self.server_cpu = ProcessCpu(server_pid)
        self.redis_url, self.grpc_target = redis_url, grpc_target
        self.users, self.configs, self.profile = users, configs, profile
        self.prepared: set = set()
        self.cells: list[dict] = []

    def cell(self, arch: str, model: str, seq_len: int, qps: float, seconds: float,
             phase: str) -> dict:
        key = (arch, model, seq_len)
        if key not in self.prepared:
            self.generator.prepare(key, (model, arch, self.redis_url, self.grpc_target, seq_len,
                                         self.users[seq_len], random.randrange(1 << 30)))
            self.prepared.add(key)
        idle = wait_until_idle(self.server_cpu)
        cpu0 = self.server_cpu.seconds()
        result = self.generator.run(key, qps, seconds, self.profile.timeout_s)
        server_cpu_s = self.server_cpu.seconds() - cpu0
        stats = cell_stats(result.outcomes, result.latencies_s, scheduled=len(result.outcomes),
                           window_s=result.window_s, timeout_s=result.timeout_s)
        answered = stats["n_ok"] + stats["n_timeout"]  # the server did the work for these
        flops = request_flops(arch, model, self.configs[model], seq_len, CANDIDATES)
        cpu_ms = server_cpu_s * 1e3 / answered if answered else float("nan")
        cell = {"phase": phase, "arch": arch, "model": model, "seq_len": seq_len,
                "qps_target": qps, "duration_s": round(seconds, 2), "candidates": CANDIDATES,
                **stats,
                "server_cpu_ms_per_request": round(cpu_ms, 3),
                "generator_cpu_ms_per_request": round(
                    result.generator_cpu_s * 1e3 / stats["scheduled"], 3),
                "send_lag_p99_ms": result.send_lag_p99_ms,
                "mflop_per_request": round(flops / 1e6, 2),
                "gflops_per_server_cpu_s": round(flops / (cpu_ms * 1e6), 2)
                if cpu_ms == cpu_ms and cpu_ms > 0 else None,
                "cooldown_s": idle["waited_s"], "server_idle_before": idle["idle"]}
        if result.error_samples:
            cell["error_sample"] = result.error_samples[0]
        self.cells.append(cell)
        print(f"[archab] {phase:8s} {arch} {model} L={seq_len:<5} qps={qps:<7} "
              f"p99={cell['p99_ms']} ms (ok-only {cell['ok_p99_ms']}) "
              f"err={cell['error_rate']:.3f} cpu/req={cell['server_cpu_ms_per_request']} ms "
              f"gen/req={cell['generator_cpu_ms_per_request']} ms", flush=True)
        return cell


def measure_costs(runner: Runner, plan, profile: Profile) -> list[dict]:
    """One low-rate cell per (arch, model, L), interleaved; flagged if it saturated."""
    costs = []
    for seq_len in profile.seq_lens:
        for arch, model in plan:
            cell = runner.cell(arch, model, seq_len, profile.cost_qps, profile.cost_s, "cost")
            costs.append({k: cell[k] for k in (
                "arch", "model", "seq_len", "qps_target", "server_cpu_ms_per_request",
                "generator_cpu_ms_per_request", "mflop_per_request", "gflops_per_server_cpu_s",
                "p50_ms", "p99_ms", "error_rate")}
                | {"unsaturated": not cell["saturated"] and cell["error_rate"] == 0})
    return costs


def search_capacities(runner: Runner, plan, profile: Profile, slos=SLOS_MS) -> list[dict]:
    """Advance every (arch, model, L) search by one cell per round until all are done."""
    series = [(arch, model, seq_len) for seq_len in profile.seq_lens for arch, model in plan]
    observed: dict[tuple, dict[float, dict]] = {s: {} for s in series}

    def pending(key) -> float | None:
        rates = [next_rate({r: meets_slo(c, slo) for r, c in observed[key].items()},
                           profile.search) for slo in slos]
        rates = [r for r in rates if r is not None]
        return min(rates) if rates else None

    while True:
        progressed = False
        for key in series:
            rate = pending(key)
            if rate is not None:
                observed[key][rate] = runner.cell(*key, rate, profile.cell_seconds(rate),
                                                  "capacity")
                progressed = True
        if not progressed:
            break
    results = []
    for (arch, model, seq_len), cells in observed.items():
        for slo in slos:
            found = capacity({r: meets_slo(c, slo) for r, c in cells.items()}, profile.search)
            results.append({"arch": arch, "model": model, "seq_len": seq_len, "slo_ms": slo,
                            "capacity_qps": found["qps"], "at_least": found["at_least"],
                            "first_failing_qps": found["first_failing_qps"],
                            "probes": sorted(cells)})
    return results


def run(quick: bool = False, *, profile: Profile | None = None, plan=PLAN,
        workdir: Path | None = None, server_args=SERVER_ARGS, model_config=None) -> dict:
    """The whole A/B benchmark; returns {"settings", "cost", "capacity", "cells"}."""
    from devkit.model_server_process import ModelServerProcess
    from devkit.redis_server import EmbeddedRedis
    from model_server.config import write_models_config
    from uic.contract import ExportMetadata, export_dir, serving_model_name

    profile = profile or (QUICK if quick else FULL)
    models = tuple(sorted({m for _, m in plan}))
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="uic-ab-")))
        redis = stack.enter_context(EmbeddedRedis(data_dir=workdir / "redis"))
        print(f"[archab] preparing models and {profile.users_per_len} users per L in "
              f"{list(profile.seq_lens)}", flush=True)
        users = prepare(workdir, redis.url, profile.seq_lens, profile.users_per_len,
                        models=models, config=model_config,
                        full_models=tuple(m for a, m in plan if a == "A"))
        root = workdir / "saved_models"
        served = {serving_model_name(m, "full" if a == "A" else "head"): None for a, m in plan}
        config = write_models_config(workdir / "models.config",
                                     {name: root / name for name in served})
        server = stack.enter_context(ModelServerProcess(
            [f"--model_config_file={config}", "--rest_api_port=0", *server_args],
            log_path=workdir / "model_server.log"))
        generator = stack.enter_context(LoadGenerator(_make_call))
        configs = {m: ExportMetadata.read(export_dir(root, m, "head", 1)).config for m in models}
        runner = Runner(generator, server.process.pid, redis.url, server.grpc_target, users,
                        configs, profile)
        started = time.perf_counter()
        costs = measure_costs(runner, plan, profile)
        capacities = search_capacities(runner, plan, profile)
        settings = {**asdict(profile), "plan": [list(p) for p in plan],
                    "slos_ms": list(SLOS_MS), "candidates": CANDIDATES,
                    "server_args": list(server_args), "model_configs": configs,
                    "seconds": round(time.perf_counter() - started, 1)}
    print(markdown_table(capacities, ["arch", "model", "seq_len", "slo_ms", "capacity_qps",
                                      "at_least"]))
    print(markdown_table(costs, ["arch", "model", "seq_len", "server_cpu_ms_per_request",
                                 "mflop_per_request", "gflops_per_server_cpu_s",
                                 "generator_cpu_ms_per_request", "unsaturated"]))
    return {"settings": settings, "cost": costs, "capacity": capacities, "cells": runner.cells}


def _ratio(num, den) -> float | None:
    if num is None or den is None or not den or num != num or den != den:
        return None
    return round(num / den, 2)


def summarize(result: dict) -> dict:
    """The headline: capacities per SLO, CPU-ms per request, and the A/B ratios of both
    (A/B cost = A's CPU-ms over B's; B/A capacity = B's capacity over A's, None when A has
    none at that SLO)."""
    out: dict = {}
    cost = {(c["arch"], c["model"], c["seq_len"]): c for c in result.get("cost", [])}
    cap = {(c["arch"], c["model"], c["seq_len"], c["slo_ms"]): c
           for c in result.get("capacity", [])}
    for (arch, model, seq_len), c in sorted(cost.items()):
        out[f"{arch}_{model}_cpu_ms_per_request_L{seq_len}"] = c["server_cpu_ms_per_request"]
    for (arch, model, seq_len, slo), c in sorted(cap.items()):
        bound = "+" if c["at_least"] else ""
        out[f"{arch}_{model}_capacity_qps_L{seq_len}_slo{slo:g}ms"] = f"{c['capacity_qps']:g}{bound}"
    for seq_len in sorted({k[2] for k in cost}):
        a = cost.get(("A", "dien", seq_len))
        for model in ("dien", "mimn"):
            b = cost.get(("B", model, seq_len))
            if a and b:
                out[f"A_dien_over_B_{model}_cpu_ms_L{seq_len}"] = _ratio(
                    a["server_cpu_ms_per_request"], b["server_cpu_ms_per_request"])
            for slo in SLOS_MS:
                ca, cb = cap.get(("A", "dien", seq_len, slo)), cap.get(("B", model, seq_len, slo))
                if ca and cb:
                    out[f"B_{model}_over_A_dien_capacity_L{seq_len}_slo{slo:g}ms"] = _ratio(
                        cb["capacity_qps"], ca["capacity_qps"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.archab",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 lengths, short cells")
    parser.add_argument("--seq_lens", default=None, help="comma-separated L (default: profile)")
    parser.add_argument("--cells", default=",".join(f"{a}:{m}" for a, m in PLAN),
                        help="which (arch:model) pairs to run (default: %(default)s)")
    parser.add_argument("--server_args", default=" ".join(SERVER_ARGS),
                        help="extra model-server flags (default: %(default)s)")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.seq_lens:
        try:
            lens = tuple(int(x) for x in args.seq_lens.split(","))
        except ValueError:
            parser.error("--seq_lens takes comma-separated integers, e.g. 50,1000")
        if any(x <= 0 for x in lens):
            parser.error("--seq_lens must be positive")
        profile = replace(profile, seq_lens=lens)
    plan = tuple(tuple(c.split(":", 1)) for c in args.cells.split(",") if c)
    if not plan or any(len(c) != 2 or c[0] not in "AB" or c[1] not in ("dien", "mimn")
                       for c in plan):
        parser.error("--cells takes arch:model pairs such as A:dien,B:mimn")
    result = run(profile=profile, plan=plan, server_args=tuple(args.server_args.split()))
    for key, value in summarize(result).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
