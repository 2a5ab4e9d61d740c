"""Model registry: name -> class, and building a model with its variables created."""

from __future__ import annotations

import keras

from tf_models.base import UICModel
from tf_models.config import ModelConfig
from tf_models.dien import DIEN
from tf_models.mimn import MIMN
from tf_models.mlp import EmbeddingMLP
from uic.contract import MODELS

MODEL_CLASSES: dict[str, type[UICModel]] = {cls.model_name: cls for cls in (DIEN, MIMN, EmbeddingMLP)}


def build_model(name: str, config: ModelConfig | None = None, seed: int | None = None) -> UICModel:
    """A model with all variables created (so weights can be loaded or exported at once).

    `seed` (default: config.seed) fixes the initial weights."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; expected one of {list(MODELS)}")
    config = config or ModelConfig()
    keras.utils.set_random_seed(config.seed if seed is None else int(seed))
    model = MODEL_CLASSES[name](config)
    model(model.dummy_inputs(), training=False)
    return model
