"""The Embedding&MLP baseline: sum-pooled history, no sequence model (DIEN paper's
"BaseModel"). Its state is the masked embedding sum and the event count, so it splits like
the others, but the point of it is the `full` model's AUC next to DIEN's and MIMN's."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.base import UICModel
from tf_models.layers.mlp import MLP


@keras.saving.register_keras_serializable(package="uic")
class EmbeddingMLP(UICModel):
    model_name = "mlp"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.mlp = MLP(
            self.config.mlp_units, activation="prelu", momentum=self.config.norm_momentum, name="mlp"
        )
        self.mlp.build((None, 3 * self.behaviour_dim))

    def state_layout(self):
        return [("behaviour_sum", self.behaviour_dim), ("count", 1)]

    def initial_components(self, batch):
        return tuple(tf.zeros([batch, size]) for _, size in self.state_layout())

    def cell(self, components, x):
        esum, count = components
        return (esum + x, count + 1.0), esum

    def score(self, components, cand, training=None):
        esum, count = components
        pooled = tf.broadcast_to(self.pooled_history(esum, count), tf.shape(cand))
        return self.mlp(tf.concat([cand, pooled, cand * pooled], -1), training=training)
