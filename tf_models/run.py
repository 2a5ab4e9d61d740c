"""A training run directory: what `tf_models.train` writes and `tf_models.export` reads.

    RUN_DIR/run.json           {"model": name, "config": ModelConfig fields, ...}
    RUN_DIR/model.weights.h5   Keras weights
    RUN_DIR/metrics.json       training/eval metrics
"""

from __future__ import annotations

import json
from pathlib import Path

from tf_models.base import UICModel
from tf_models.config import ModelConfig
from tf_models.models import build_model

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.weights.h5"
METRICS_FILE = "metrics.json"


def save_run(model: UICModel, run_dir, extra: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"model": model.model_name, "config": model.config.to_dict(), **(extra or {})}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    model.save_weights(str(run_dir / WEIGHTS_FILE))
    return run_dir


def load_run(run_dir) -> UICModel:
    run_dir = Path(run_dir)
    meta_path, weights = run_dir / RUN_FILE, run_dir / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a training run (needs {RUN_FILE} and {WEIGHTS_FILE}); "
            "create one with `python -m tf_models.train --model dien --data DIR --out RUN_DIR`"
        )
    try:
        record = json.loads(meta_path.read_text())
        config = ModelConfig.from_dict(record["config"])
        name = record["model"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_path} is corrupt ({err}); re-run training") from None
    model = build_model(name, config)
    model.load_weights(str(weights))
    return model
