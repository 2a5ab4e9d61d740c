"""Client-side cost per request: Redis read, request building, RPC, at 1 and 100 candidates.

Starts its own Redis and model server, seeds random interest states (architecture B) and
behaviour lists of length L (architecture A), then sends sequential requests through
`client.Scorer` and reports percentiles of the timing breakdown every `ScoreResult` carries:
`redis_ms` (state or behaviour read; the active pointer is cached for 1 s), `build_ms`
(numpy -> PredictRequest / JSON body), `rpc_ms` (send, server work, decode), `total_ms`.
The cells (gRPC and REST, A and B, 1 and 100 candidates) run side by side: round-robin, one
request per cell per round, so drifting machine load affects them alike.

Models: the exports in `saved_models/` when `dien_head` and `dien_full` are there (trained,
real size), else tiny untrained exports written to a temporary folder.

    python -m bench.client [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.report import percentiles_ms

MODEL = "dien"
VERSION = 1
HISTORY = 100  # L for architecture A
USERS = 200


def _exports(tmp: Path) -> tuple[Path, int, str]:
    """(export root, version, description) holding dien_head and dien_full."""
    from uic.contract import latest_version

    root = Path(__file__).resolve().parents[1] / "saved_models"
    head_v = latest_version(root, MODEL, "head")
    if head_v is not None and latest_version(root, MODEL, "full") == head_v:
        return root, head_v, f"saved_models/ (version {head_v})"
    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    export_model(MODEL, tmp, VERSION, config=ModelConfig.tiny(), seed=0, parts=("head", "full"))
    return tmp, VERSION, "tiny untrained export (ModelConfig.tiny)"


def _seed(store, version: int, state_size: int, rng) -> None:
    from uic.events import Event

    rows = [(u, rng.standard_normal(state_size).astype(np.float32), HISTORY, 1, "")
            for u in range(USERS)]
    store.write_states(MODEL, version, rows)
    store.write_cold_start(MODEL, version, np.zeros(state_size, np.float32))
    events = [Event(user_id=u, item_id=int(rng.integers(1, 10**6)),
                    category_id=int(rng.integers(1, 1000)), behavior_type="pv",
                    event_time_ms=1_700_000_000_000 + k, event_id=f"b-{u}-{k}")
              for u in range(USERS) for k in range(HISTORY)]
    store.append_behaviours(events, cap=HISTORY)
    store.set_active_version(MODEL, version)


def _measure(scorers: dict, requests: int, rng) -> list[dict]:
    """Round-robin over every (transport, arch, candidates) cell, one request each per
    round, so drifting machine load hits all cells alike."""
    cells = [(t, arch, n) for t in scorers for arch in ("B", "A") for n in (1, 100)]
    cands = {n: (rng.integers(1, 10**6, n), rng.integers(1, 1000, n)) for n in (1, 100)}
    for i in range(20):  # warm up connections and the pointer cache
        for t, arch, n in cells:
            scorers[t].score(i % USERS, *cands[n], arch=arch)
    parts = {c: {"redis": [], "build": [], "rpc": [], "total": []} for c in cells}
    statuses: dict = {c: {} for c in cells}
    for _ in range(requests):
        user = int(rng.integers(0, USERS))
        for cell in cells:
            t, arch, n = cell
            r = scorers[t].score(user, *cands[n], arch=arch)
            statuses[cell][r.status.value] = statuses[cell].get(r.status.value, 0) + 1
            for key, values in parts[cell].items():
                values.append(getattr(r, f"{key}_ms") / 1e3)
    records = []
    for cell in cells:
        t, arch, n = cell
        record = {"bench": "client_request", "transport": t, "arch": arch, "candidates": n,
                  "requests": requests,
                  "statuses": ",".join(f"{k}:{v}" for k, v in sorted(statuses[cell].items()))}
        for key, values in parts[cell].items():
            pct = percentiles_ms(values)
            record[f"{key}_p50_ms"] = pct["p50_ms"]
            record[f"{key}_p99_ms"] = pct["p99_ms"]
        record["client_share_p50"] = round(
            (record["redis_p50_ms"] + record["build_p50_ms"]) / record["total_p50_ms"], 3)
        records.append(record)
    return records


def run(quick: bool = False) -> list[dict]:
    from client import Scorer
    from devkit.model_server_process import ModelServerProcess
    from devkit.redis_server import EmbeddedRedis
    from model_server.config import write_models_config
    from uic.contract import ExportMetadata, export_dir, serving_model_name
    from uic.store import connect as store_connect

    requests = 200 if quick else 2000
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_client_") as tmp:
        tmp = Path(tmp)
        root, version, source = _exports(tmp)
        meta = ExportMetadata.read(export_dir(root, MODEL, "head", version))
        state_size = meta.state_size
        served = [serving_model_name(MODEL, part) for part in ("head", "full")]
        config = write_models_config(tmp / "models.config", {
            name: {"base_path": root / name, "policy": [version]} for name in served})
        with EmbeddedRedis() as redis_server, \
                ModelServerProcess([f"--model_config_file={config}",
                                    "--max_num_load_retries=0",
                                    # XLA-compiled exports run only with the flag
                                    f"--xla_cpu_compilation_enabled={str(meta.xla).lower()}"]
                                   ) as server:
            store = store_connect(redis_server.url)
            _seed(store, version, state_size, rng)
            store.client.close()
            scorers = {t: Scorer(MODEL, redis_url=redis_server.url, server=target,
                                 transport=t, history_length=HISTORY, deadline_ms=5000,
                                 redis_timeout_ms=1000)
                       for t, target in (("grpc", server.grpc_target),
                                         ("rest", f"127.0.0.1:{server.rest_port}"))}
            try:
                records = _measure(scorers, requests, rng)
            finally:
                for scorer in scorers.values():
                    scorer.close()
            for rec in records:
                rec.update(model=MODEL, state_size=state_size, history=HISTORY, models=source)
    by = {(r["transport"], r["arch"], r["candidates"]): r for r in records}
    for n in (1, 100):
        records.append({
            "bench": "client_ratios", "candidates": n,
            "A_over_B_total_p50": round(by[("grpc", "A", n)]["total_p50_ms"]
                                        / by[("grpc", "B", n)]["total_p50_ms"], 2),
            "rest_over_grpc_total_p50": round(by[("rest", "B", n)]["total_p50_ms"]
                                              / by[("grpc", "B", n)]["total_p50_ms"], 2),
            "B_grpc_client_side_p50_ms": round(by[("grpc", "B", n)]["redis_p50_ms"]
                                               + by[("grpc", "B", n)]["build_p50_ms"], 3),
        })
    _print(records)
    return records


def _print(records: list[dict]) -> None:
    cols = ("transport", "arch", "candidates", "redis_p50_ms", "redis_p99_ms", "build_p50_ms",
            "build_p99_ms", "rpc_p50_ms", "rpc_p99_ms", "total_p50_ms", "total_p99_ms",
            "statuses")
    rows = [r for r in records if r["bench"] == "client_request"]
    if rows:
        print(f"client cost per request ({rows[0]['models']}, state size "
              f"{rows[0]['state_size']}, A history {HISTORY}); sequential, times in ms")
    print("  ".join(f"{c.replace('_ms', ''):>13}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>13}" for c in cols))
    for r in records:
        if r["bench"] == "client_ratios":
            print(f"{r['candidates']:>3} candidates: A/B total p50 {r['A_over_B_total_p50']}x, "
                  f"REST/gRPC (B) {r['rest_over_grpc_total_p50']}x, client-side "
                  f"(redis+build) p50 {r['B_grpc_client_side_p50_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 requests per cell (< 1 min)")
    args = parser.parse_args(argv)
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
