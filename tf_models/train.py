"""Train DIEN, MIMN or the Embedding&MLP baseline on event + impression files.

    python -m tf_models.train --model dien --data data/demo --out runs/dien

Writes RUN_DIR/run.json (model name + config), RUN_DIR/model.weights.h5 and
RUN_DIR/metrics.json (held-out AUC and log loss, example counts, timings); export the run
with `python -m tf_models.export --run RUN_DIR --out saved_models --version N`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tf_models.config import ModelConfig
from tf_models.metrics import auc
from uic.contract import MODELS

DEFAULTS = {"epochs": 2, "batch_size": 128, "max_len": 100}


def build_config(args, data) -> ModelConfig:
    base = ModelConfig.tiny() if args.size == "tiny" else ModelConfig()
    overrides = {"seed": args.seed}
    overrides["item_buckets"] = args.item_buckets or min(data.max_item_id + 2, base.item_buckets)
    overrides["cate_buckets"] = args.cate_buckets or min(data.max_cate_id + 2, base.cate_buckets)
    for name in ("embedding_dim", "ring_size", "memory_slots", "learning_rate", "augru_form",
                 "history_pooling", "aux_loss_weight"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    return base.replace(**overrides)


def train(args) -> dict:
    import keras

    from tf_models.dataset import load_examples, make_dataset
    from tf_models.models import build_model
    from tf_models.run import METRICS_FILE, save_run

    started = time.time()
    data = load_examples(args.data, args.max_len, args.eval_fraction)
    config = build_config(args, data)
    model = build_model(args.model, config)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc")],
        jit_compile=False,
    )
    negatives = (data.pool_items, data.pool_cates) if args.model == "dien" else None
    train_ds = make_dataset(data.train, args.batch_size, shuffle=True, seed=args.seed, negatives=negatives)
    eval_ds = make_dataset(data.eval, 512, shuffle=False)
    print(
        f"{args.model}: {len(data.train)} train / {len(data.eval)} eval impressions, "
        f"{data.num_events} events, state size {model.state_size}",
        flush=True,
    )
    history = model.fit(train_ds, epochs=args.epochs, verbose=args.verbose, shuffle=False)  # ds shuffles
    fit_seconds = time.time() - started
    scores = model.predict(eval_ds, verbose=0)
    labels = data.eval.label
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    eval_auc = auc(scores, labels)
    metrics = {
        "model": args.model,
        "eval_auc": float("nan") if eval_auc is None else eval_auc,
        "eval_logloss": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))),
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "eval_positive_rate": float(labels.mean()),
        "events": data.num_events,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "seed": args.seed,
        "state_size": model.state_size,
        "train_loss": [float(x) for x in history.history.get("loss", [])],
        "train_auc": [float(x) for x in history.history.get("auc", [])],
        "seconds": round(time.time() - started, 1),
        "fit_seconds": round(fit_seconds, 1),
    }
    out = Path(args.out)
    save_run(model, out, extra={"data": str(args.data), "max_len": args.max_len})
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics[k] for k in ("model", "eval_auc", "eval_logloss", "seconds")}))
    return metrics


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tf_models.train",
        description="Train a UIC-split CTR model (DIEN, MIMN or the Embedding&MLP baseline).",
    )
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--data", required=True, help="directory with events.jsonl and impressions.jsonl")
    p.add_argument("--out", required=True, help="run directory to write (weights, run.json, metrics.json)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch_size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--max_len", type=int, default=DEFAULTS["max_len"], help="history events per impression")
    p.add_argument("--eval_fraction", type=float, default=0.2, help="latest share of impressions held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=("paper", "tiny"), default="paper",
                   help="paper dims (default) or the tiny test config")
    p.add_argument("--item_buckets", type=int, default=None, help="default: max item id + 2 (capped)")
    p.add_argument("--cate_buckets", type=int, default=None, help="default: max category id + 2 (capped)")
    p.add_argument("--embedding_dim", type=int, default=None)
    p.add_argument("--ring_size", type=int, default=None, help="DIEN K")
    p.add_argument("--memory_slots", type=int, default=None, help="MIMN m")
    p.add_argument("--learning_rate", type=float, default=None)
    p.add_argument("--augru_form", choices=("paper", "official"), default=None)
    p.add_argument("--history_pooling", choices=("mean", "sum"), default=None)
    p.add_argument("--aux_loss_weight", type=float, default=None, help="DIEN alpha (0 disables)")
    p.add_argument("--verbose", default="auto", help="Keras verbosity: auto, 0, 1 (progress bar), 2")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "max_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.eval_fraction < 1.0:
        p.error(f"--eval_fraction must be in (0, 1), got {args.eval_fraction}")
    if args.verbose != "auto":
        if args.verbose not in ("0", "1", "2"):
            p.error(f"--verbose must be auto, 0, 1 or 2, got {args.verbose!r}")
        args.verbose = int(args.verbose)
    if Path(args.out).exists() and any(Path(args.out).iterdir()) and not (Path(args.out) / "run.json").exists():
        p.error(f"--out {args.out} exists and is not a run directory; choose an empty or new path")
    try:
        train(args)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
