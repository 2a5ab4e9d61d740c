"""Model-level serialization: a model's Keras config rebuilds the same model (same
ModelConfig, same outputs with the same weights), directly and through a `.keras` file, and
the registry builds exactly the contract's models."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tf_models.config import ModelConfig
from tf_models.models import MODEL_CLASSES, build_model
from uic.contract import MODELS


def test_registry_builds_the_contract_models():
    assert tuple(MODEL_CLASSES) == MODELS
    with pytest.raises(ValueError, match=r"unknown model 'din'; expected one of \['dien'"):
        build_model("din")


@pytest.fixture(scope="module")
def tiny_models():
    config = ModelConfig.tiny(history_pooling="sum", augru_form="official", seed=4)
    return {name: build_model(name, config) for name in MODELS}


def _scores(model):
    return model(model.dummy_inputs(batch=3, length=5), training=False).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_from_config_rebuilds_the_model(tiny_models, name):
    model = tiny_models[name]
    config = json.loads(json.dumps(model.get_config()))
    clone = model.__class__.from_config(config)
    assert clone.config == model.config
    assert clone.state_layout() == model.state_layout()
    clone.build_from_config({})
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(_scores(clone), _scores(model))


@pytest.mark.parametrize("name", MODELS)
def test_keras_file_round_trip(tiny_models, name, tmp_path):
    model = tiny_models[name]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    np.testing.assert_array_equal(_scores(loaded), _scores(model))
