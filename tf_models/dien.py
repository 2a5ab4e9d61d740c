"""DIEN (Zhou et al., AAAI 2019) split for UIC serving.

State = [extractor GRU state h (H), ring buffer of the last K extractor states (K*H),
masked behaviour-embedding sum (2E), event count (1)]. The head reorders the ring oldest
first, runs attention + AUGRU over the last min(K, n) states per candidate, then the MLP.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.base import UICModel
from tf_models.layers.din_attention import DinAttention
from tf_models.layers.gru_cell import GRUCell
from tf_models.layers.interest_evolution import InterestEvolution
from tf_models.layers.mlp import MLP


@keras.saving.register_keras_serializable(package="uic")
class DIEN(UICModel):
    model_name = "dien"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.config
        e, h = self.behaviour_dim, cfg.gru_units
        self.extractor = GRUCell(h, name="interest_extractor")
        self.extractor.build((None, e))
        self.attention = DinAttention(cfg.attention_units, project_query=True, name="attention")
        self.attention.build((None, e), (None, cfg.ring_size, h))
        self.evolution = InterestEvolution(h, form=cfg.augru_form, name="interest_evolution")
        self.evolution.build((None, cfg.ring_size, h))
        self.mlp = MLP(cfg.mlp_units, activation="dice", dice_epsilon=cfg.dice_epsilon,
                       momentum=cfg.norm_momentum, name="mlp")
        self.mlp.build((None, 3 * e + h))
        self.aux_layers = [
            keras.layers.Dense(u, activation="sigmoid", name=f"aux_{i}")
            for i, u in enumerate(cfg.aux_units)
        ] + [keras.layers.Dense(1, name="aux_logit")]
        dim = h + e
        for layer in self.aux_layers:
            layer.build((None, dim))
            dim = layer.units

    @property
    def collects_outputs(self):
        return self.config.aux_loss_weight > 0

    def state_layout(self):
        k, h = self.config.ring_size, self.config.gru_units
        return [("gru_state", h), ("ring", k * h), ("behaviour_sum", self.behaviour_dim), ("count", 1)]

    def initial_components(self, batch):
        return tuple(tf.zeros([batch, size]) for _, size in self.state_layout())

    def cell(self, components, x):
        h, ring, esum, count = components
        k, units = self.config.ring_size, self.config.gru_units
        h_new = self.extractor(x, h)
        slot = tf.one_hot(tf.math.floormod(tf.cast(count[:, 0], tf.int32), k), k, on_value=True, off_value=False)
        ring = tf.where(slot[:, :, None], h_new[:, None, :], tf.reshape(ring, [-1, k, units]))
        return (h_new, tf.reshape(ring, [-1, k * units]), esum + x, count + 1.0), h_new

    def ordered_ring(self, ring, count):
        """Ring [F, K*H] written at count mod K -> ([F, K, H] oldest first, valid mask [F, K])."""
        k, units = self.config.ring_size, self.config.gru_units
        n = tf.cast(count[:, 0], tf.int32)
        start = tf.where(n >= k, tf.math.floormod(n, k), tf.zeros_like(n))
        index = tf.math.floormod(start[:, None] + tf.range(k)[None, :], k)
        ordered = tf.gather(tf.reshape(ring, [-1, k, units]), index, batch_dims=1)
        return ordered, tf.range(k)[None, :] < tf.minimum(n, k)[:, None]

    def score(self, components, cand, training=None):
        _, ring, esum, count = components
        facts, mask = self.ordered_ring(ring, count)
        weights = self.attention(cand, facts, mask)
        interest = self.evolution(facts, weights, mask)
        pooled = tf.broadcast_to(self.pooled_history(esum, count), tf.shape(cand))
        features = tf.concat([cand, pooled, cand * pooled, interest], -1)
        return self.mlp(features, training=training)

    def _aux_logit(self, h, e):
        z = tf.concat([h, e], -1)
        for layer in self.aux_layers:
            z = layer(z)
        return z[..., 0]

    def extra_losses(self, components, outputs, x, mask, inputs):
        """Auxiliary loss (DIEN eq. 6): h_t must tell the next behaviour e_{t+1} from a sampled
        negative. Training only: not part of any exported signature."""
        if outputs is None or "neg_item_ids" not in inputs or self.config.aux_loss_weight <= 0:
            return []
        neg = self.embed(inputs["neg_item_ids"], inputs["neg_cate_ids"])
        h = outputs[:, :-1]
        valid = tf.cast(mask[:, 1:], x.dtype)
        pos_logit = self._aux_logit(h, x[:, 1:])
        neg_logit = self._aux_logit(h, neg[:, 1:])
        per_step = tf.nn.softplus(-pos_logit) + tf.nn.softplus(neg_logit)
        loss = tf.reduce_sum(per_step * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)
        return [self.config.aux_loss_weight * loss]
