"""Architecture A against Architecture B, side by side, through the real stack.

Set-up (once per run): paper-size DIEN and MIMN exports (weights do not change latency),
an embedded Redis, and the model server hosting `dien_full`, `dien_head` and `mimn_head`.
For every history length L, `users_per_len` users get L random behaviours in the behaviour
log (what A reads) and the state the exported `tower` computes from them (what B reads).

Cells: for each L and target QPS, an open-loop load generator in its own process calls the
project's client (`client.Scorer`) for random users of that L with 100 candidates:
  A  dien: read the last L behaviours from Redis, call `dien_full`;
  B  dien / mimn: read the state from Redis, call `<model>_head`.
Latency is measured from each request's scheduled start (see bench.loadgen).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.loadgen import run_in_process
from bench.report import markdown_table, percentiles_ms

CANDIDATES = 100
SEQ_LENS = (50, 200, 1000)
QPS = (50, 100, 200, 500)
ITEM_RANGE = (1, 5_000_000)
CATE_RANGE = (1, 500)


def _make_call(model: str, arch: str, redis_url: str, server: str, seq_len: int,
               user_ids: list[int], seed: int):
    """Build, in the load-generator process, the per-request callable for one cell."""
    from client import Scorer

    scorer = Scorer(model, redis_url=redis_url, server=server, arch=arch,
                    history_length=max(seq_len, 1), deadline_ms=30_000,
                    redis_timeout_ms=2_000, pool_size=64)
    rng = np.random.default_rng(seed)
    # A fixed pool of candidate lists, so that request building is the client's cost only.
    pool = [(rng.integers(*ITEM_RANGE, CANDIDATES), rng.integers(*CATE_RANGE, CANDIDATES))
            for _ in range(64)]

    def call(i: int) -> None:
        items, cates = pool[i % len(pool)]
        result = scorer.score(user_ids[i % len(user_ids)], items, cates)
        if result.status.value not in ("fresh", "stale"):
            raise RuntimeError(f"unexpected status {result.status.value}: {result.reason}")

    return call


def prepare(workdir: Path, redis_url: str, seq_lens, users_per_len: int, seed: int = 0,
            models=("dien", "mimn")) -> dict[int, list[int]]:
    """Export the models (version 1) and fill Redis: behaviour logs and tower states."""
    import tensorflow as tf

    from tf_models.export import export_model
    from uic.contract import export_dir
    from uic.events import Event
    from uic.store import connect as store_connect

    for model in models:
        if not export_dir(workdir / "saved_models", model, "head", 1).exists():
            export_model(model, workdir / "saved_models", 1, seed=seed,
                         parts=("tower", "head", "full") if model == "dien" else ("tower", "head"))
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
                       f"b{uid}-{j}") for j in range(seq_len)), cap=max(SEQ_LENS))
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


PLAN = (("A", "dien"), ("B", "dien"), ("B", "mimn"))
# Extra model-server flags for the load test. TF's default thread pools measured better than
# --tensorflow_intra_op_parallelism=1 here (B dien at 500 QPS: 353 vs 271 QPS achieved).
SERVER_ARGS: tuple[str, ...] = ()


def run(quick: bool = False, *, seq_lens=SEQ_LENS, qps_list=QPS, duration_s: float | None = None,
        users_per_len: int = 200, workdir: Path | None = None, plan=PLAN,
        server_args=SERVER_ARGS) -> list[dict]:
    """Every (arch, model, L, QPS) cell; returns the report's cell records."""
    from devkit.model_server_process import ModelServerProcess
    from devkit.redis_server import EmbeddedRedis
    from model_server.config import write_models_config
    from uic.contract import serving_model_name

    if quick:
        seq_lens, qps_list = (50, 1000), (50, 200)
        duration_s = duration_s or 3.0
        users_per_len = min(users_per_len, 50)
    duration_s = duration_s or 10.0
    cells: list[dict] = []
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="uic-ab-")))
        redis = stack.enter_context(EmbeddedRedis(data_dir=workdir / "redis"))
        print(f"[archab] preparing models and {users_per_len} users per L in {list(seq_lens)}")
        users = prepare(workdir, redis.url, seq_lens, users_per_len)
        served = {serving_model_name("dien", "full"): "dien_full",
                  serving_model_name("dien", "head"): "dien_head",
                  serving_model_name("mimn", "head"): "mimn_head"}
        config = write_models_config(workdir / "models.config",
                                     {name: workdir / "saved_models" / d for name, d in served.items()})
        server = stack.enter_context(ModelServerProcess(
            [f"--model_config_file={config}", "--rest_api_port=0", *server_args],
            log_path=workdir / "model_server.log"))
        for seq_len in seq_lens:
            for qps in qps_list:
                for arch, model in plan:
                    res = run_in_process(
                        _make_call,
                        (model, arch, redis.url, server.grpc_target, seq_len, users[seq_len],
                         random.randrange(1 << 30)),
                        qps=qps, duration_s=duration_s, workers=64, timeout_s=5.0)
                    pct = percentiles_ms(res.latencies_s)
                    cell = {"arch": arch, "model": model, "seq_len": seq_len,
                            "qps_target": qps, "qps_achieved": round(res.qps_achieved, 1),
                            "p50_ms": pct["p50_ms"], "p95_ms": pct["p95_ms"],
                            "p99_ms": pct["p99_ms"], "errors": res.errors,
                            "candidates": CANDIDATES, "sent": res.sent,
                            "duration_s": duration_s}
                    if res.error_samples:
                        cell["error_sample"] = res.error_samples[0]
                    cells.append(cell)
                    print(f"[archab] {arch} {model} L={seq_len} qps={qps}: p50={cell['p50_ms']} "
                          f"p99={cell['p99_ms']} ms achieved={cell['qps_achieved']} "
                          f"errors={cell['errors']}", flush=True)
                    time.sleep(0.5)
    add_ratios(cells)
    print(markdown_table(cells, ["arch", "model", "seq_len", "qps_target", "qps_achieved",
                                 "p50_ms", "p99_ms", "errors", "ab_p99_ratio"]))
    return cells


def add_ratios(cells: list[dict]) -> None:
    """A/B p99 ratio on each B cell: A (dien) p99 over this B cell's p99 at the same L, QPS."""
    a = {(c["seq_len"], c["qps_target"]): c for c in cells if c["arch"] == "A"}
    for cell in cells:
        other = a.get((cell["seq_len"], cell["qps_target"]))
        if cell["arch"] == "B" and other and cell["p99_ms"] > 0:
            cell["ab_p99_ratio"] = round(other["p99_ms"] / cell["p99_ms"], 1)


def summarize(cells: list[dict]) -> dict:
    """The issue's targets, as measured (not asserted)."""
    def get(arch, model, seq_len, qps):
        for c in cells:
            if (c["arch"], c["model"], c["seq_len"], c["qps_target"]) == (arch, model, seq_len, qps):
                return c
        return None

    out = {}
    top_qps = max((c["qps_target"] for c in cells), default=None)
    lens = sorted({c["seq_len"] for c in cells})
    if not lens:
        return out
    lo, hi = lens[0], lens[-1]
    b_hi = get("B", "dien", hi, top_qps)
    a_hi = get("A", "dien", hi, top_qps)
    if b_hi:
        out[f"B_dien_p99_ms_L{hi}_qps{top_qps}"] = b_hi["p99_ms"]
    m_hi = get("B", "mimn", hi, top_qps)
    if m_hi:
        out[f"B_mimn_p99_ms_L{hi}_qps{top_qps}"] = m_hi["p99_ms"]
    if a_hi:
        out[f"A_dien_p99_ms_L{hi}_qps{top_qps}"] = a_hi["p99_ms"]
    if a_hi and b_hi:
        out[f"A_over_B_p99_L{hi}_qps{top_qps}"] = round(a_hi["p99_ms"] / b_hi["p99_ms"], 1)
    for qps in sorted({c["qps_target"] for c in cells}):
        a, b = get("A", "dien", hi, qps), get("B", "dien", hi, qps)
        if a and b and b["p99_ms"] > 0:
            out[f"A_over_B_p99_L{hi}_qps{qps}"] = round(a["p99_ms"] / b["p99_ms"], 1)
    for model in ("dien", "mimn"):
        for qps in sorted({c["qps_target"] for c in cells}):
            b_hi, b_lo = get("B", model, hi, qps), get("B", model, lo, qps)
            if b_hi and b_lo and b_lo["p99_ms"] > 0:
                out[f"B_{model}_p99_L{hi}_over_L{lo}_qps{qps}"] = round(
                    b_hi["p99_ms"] / b_lo["p99_ms"], 2)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.archab",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 lengths x 2 rates, 3 s cells")
    parser.add_argument("--seq_lens", default=",".join(map(str, SEQ_LENS)))
    parser.add_argument("--qps", default=",".join(map(str, QPS)))
    parser.add_argument("--duration", type=float, default=None, help="seconds per cell (10)")
    parser.add_argument("--users_per_len", type=int, default=200)
    parser.add_argument("--cells", default=",".join(f"{a}:{m}" for a, m in PLAN),
                        help="which (arch:model) pairs to run (default: %(default)s)")
    parser.add_argument("--server_args", default=" ".join(SERVER_ARGS),
                        help="extra model-server flags (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        seq_lens = tuple(int(x) for x in args.seq_lens.split(","))
        qps = tuple(float(x) for x in args.qps.split(","))
    except ValueError:
        parser.error("--seq_lens and --qps take comma-separated numbers, e.g. --qps 50,100")
    if any(x <= 0 for x in seq_lens + qps):
        parser.error("--seq_lens and --qps must be positive")
    plan = tuple(tuple(c.split(":", 1)) for c in args.cells.split(",") if c)
    if not plan or any(len(c) != 2 or c[0] not in "AB" or c[1] not in ("dien", "mimn")
                       for c in plan):
        parser.error("--cells takes arch:model pairs such as A:dien,B:mimn")
    cells = run(args.quick, seq_lens=seq_lens, qps_list=qps, duration_s=args.duration,
                users_per_len=args.users_per_len, plan=plan,
                server_args=tuple(args.server_args.split()))
    print(summarize(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
