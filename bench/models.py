"""Model-side costs of the UIC split, on SavedModels loaded with tf.saved_model.load.

1. Per-event `step` (one new event folded into a stored state) against recomputing `tower`
   over the whole history, for histories of 50, 200, 1000 and 5000 events: the step cost is
   flat in the history length, the tower's grows linearly.
2. `head` (state [1, S] + candidates [1, 100]) against `full` (history [1, L] + candidates
   [1, 100]) at L = 50, 200, 1000: Architecture B's request path against Architecture A's,
   one user per call as one ad request sends.

Models: DIEN and MIMN with the papers' dimensions (ModelConfig defaults), untrained (weights
do not change the cost). Run: ``python -m bench.models [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial

import numpy as np

from bench.report import percentiles_ms
from uic.contract import SEQUENCE_MODELS

CANDIDATES = 100


def _time(fn, reps: int) -> np.ndarray:
    fn()  # warm-up (first call may trace/allocate)
    out = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def _p50_p99(prefix: str, ms: np.ndarray) -> dict:
    pct = percentiles_ms(ms / 1e3)
    return {f"{prefix}_p50_ms": pct["p50_ms"], f"{prefix}_p99_ms": pct["p99_ms"]}


def run(quick: bool = False) -> list[dict]:
    import tensorflow as tf

    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    tower_lengths = (50, 200, 1000) if quick else (50, 200, 1000, 5000)
    head_lengths = (50, 200, 1000)
    reps_short, reps_long = (5, 2) if quick else (30, 5)
    rng = np.random.default_rng(0)
    records = []
    with tempfile.TemporaryDirectory(prefix="bench_models_") as root:
        for name in SEQUENCE_MODELS:
            paths = export_model(name, root, 1, config=ModelConfig(item_buckets=100_000))
            sig = {p: tf.saved_model.load(str(path)).signatures["serving_default"] for p, path in paths.items()}

            def ids(shape):
                return tf.constant(rng.integers(1, 100_000, shape), tf.int64)

            for length in tower_lengths:
                items, cates = ids([1, length]), ids([1, length])
                lens = tf.constant([length], tf.int32)
                reps = reps_long if length >= 1000 else reps_short
                tower_ms = _time(partial(sig["tower"], hist_item_ids=items, hist_cate_ids=cates,
                                         hist_len=lens), reps)
                state = sig["tower"](hist_item_ids=items, hist_cate_ids=cates, hist_len=lens)["state"]
                one_i, one_c, one = ids([1, 1]), ids([1, 1]), tf.constant([1], tf.int32)
                step_ms = _time(partial(sig["step"], state=state, item_ids=one_i, cate_ids=one_c,
                                        num_events=one), reps_short * 4)
                records.append({
                    "bench": "models.step_vs_tower", "model": name, "history": length,
                    **_p50_p99("step", step_ms),
                    **_p50_p99("tower", tower_ms),
                    "tower_over_step": round(float(np.median(tower_ms) / np.median(step_ms)), 1),
                })
            ci, cc = ids([1, CANDIDATES]), ids([1, CANDIDATES])  # one user, [B = 1, N]
            for length in head_lengths:
                items, cates = ids([1, length]), ids([1, length])
                lens = tf.constant([length], tf.int32)
                state = sig["tower"](hist_item_ids=items, hist_cate_ids=cates, hist_len=lens)["state"]
                reps = reps_long if length >= 1000 else reps_short
                head_ms = _time(partial(sig["head"], state=state, cand_item_ids=ci, cand_cate_ids=cc),
                                reps_short * 4)
                full_ms = _time(partial(sig["full"], hist_item_ids=items, hist_cate_ids=cates,
                                        hist_len=lens, cand_item_ids=ci, cand_cate_ids=cc), reps)
                records.append({
                    "bench": "models.head_vs_full", "model": name, "history": length,
                    "candidates": CANDIDATES,
                    **_p50_p99("head", head_ms),
                    **_p50_p99("full", full_ms),
                    "full_over_head": round(float(np.median(full_ms) / np.median(head_ms)), 1),
                })
    _print(records)
    return records


def _print(records: list[dict]) -> None:
    for bench in ("models.step_vs_tower", "models.head_vs_full"):
        rows = [r for r in records if r["bench"] == bench]
        if not rows:
            continue
        keys = [k for k in rows[0] if k != "bench"]
        print(f"\n{bench}")
        print("  ".join(f"{k:>14}" for k in keys))
        for r in rows:
            print("  ".join(f"{r[k]!s:>14}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer lengths and repetitions (< 1 min)")
    args = parser.parse_args()
    run(quick=args.quick)


if __name__ == "__main__":
    main()
