"""MIMN (Pi et al., KDD 2019) split for UIC serving, as the paper itself deploys it.

State = [controller c, last read r, memory M (m*d), MIU channels S (m*U), accumulated write
weight g (m), mean of the write sum memory (d), behaviour-embedding sum (d), count (1)].
The head does the target read step (not persisted), attention over the MIU channels and the
PReLU MLP.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.base import UICModel
from tf_models.layers.din_attention import DinAttention
from tf_models.layers.mimn_cell import MIMNCell
from tf_models.layers.mlp import MLP


@keras.saving.register_keras_serializable(package="uic")
class MIMN(UICModel):
    model_name = "mimn"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        cfg = self.config
        d, u, m = self.behaviour_dim, cfg.miu_units, cfg.memory_slots
        self.memory_cell = MIMNCell(
            m, d, cfg.controller_units, u, cfg.clip_value, cfg.use_mur, cfg.mur_scale, name="mimn_cell"
        )
        self.memory_cell.build((None, d))
        # MIMN code: query = target embedding without projection (project only if sizes differ)
        self.miu_attention = DinAttention(cfg.attention_units, project_query=(d != u), name="miu_attention")
        self.miu_attention.build((None, d), (None, m, u))
        self.mlp = MLP(cfg.mlp_units, activation="prelu", momentum=cfg.norm_momentum, name="mlp")
        self.mlp.build((None, 4 * d + u))

    def state_layout(self):
        cfg, d = self.config, self.behaviour_dim
        m = cfg.memory_slots
        return [
            ("controller", cfg.controller_units),
            ("read", d),
            ("memory", m * d),
            ("miu_channels", m * cfg.miu_units),
            ("write_weight_sum", m),
            ("write_sum_mean", d),
            ("behaviour_sum", d),
            ("count", 1),
        ]

    def initial_components(self, batch):
        zeros = {name: tf.zeros([batch, size]) for name, size in self.state_layout()}
        zeros["read"] = tf.tile(self.memory_cell.initial_read()[None, :], [batch, 1])
        zeros["memory"] = tf.tile(tf.reshape(self.memory_cell.initial_memory(), [1, -1]), [batch, 1])
        return tuple(zeros[name] for name, _ in self.state_layout())

    def _shapes(self):
        cfg = self.config
        return cfg.memory_slots, self.behaviour_dim, cfg.miu_units

    def cell(self, components, x):
        c, r, memory, channels, g, msum, esum, count = components
        m, d, u = self._shapes()
        c, r, memory, channels, g, inc = self.memory_cell(
            x, c, r, tf.reshape(memory, [-1, m, d]), tf.reshape(channels, [-1, m, u]), g
        )
        new = (c, r, tf.reshape(memory, [-1, m * d]), tf.reshape(channels, [-1, m * u]), g,
               msum + inc, esum + x, count + 1.0)
        return new, c

    def score(self, components, cand, training=None):
        c, r, memory, channels, g, msum, esum, count = components
        m, d, u = self._shapes()
        rows = tf.shape(cand)[0]

        def rows_of(t):
            return tf.broadcast_to(t, tf.concat([[rows], tf.shape(t)[1:]], 0))

        memory = tf.reshape(memory, [-1, m, d])
        channels = tf.reshape(channels, [-1, m, u])
        read_out = self.memory_cell.target_read(cand, rows_of(c), rows_of(r), rows_of(memory), rows_of(g))
        all_channels = tf.ones(tf.shape(channels)[:2], tf.bool)  # paper: attend over all S_T(i)
        weights = self.miu_attention(cand, channels, all_channels)
        miu = tf.reduce_sum(weights[:, :, None] * channels, 1)
        pooled = rows_of(self.pooled_history(esum, count))
        features = tf.concat([cand, pooled, read_out, miu, rows_of(msum) * cand], -1)
        return self.mlp(features, training=training)

    def extra_losses(self, components, outputs, x, mask, inputs):
        """Memory utilisation regularisation: variance across slots of the accumulated write
        weight g (training only)."""
        cfg = self.config
        if not cfg.use_mur or cfg.mur_weight <= 0:
            return []
        g = components[4]
        _, variance = tf.nn.moments(g, axes=[1])
        return [cfg.mur_weight * tf.reduce_mean(variance)]
