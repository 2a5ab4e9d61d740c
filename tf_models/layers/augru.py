"""DIEN's interest evolution layer: an AUGRU run over a (short) sequence of interest states."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.layers.gru_cell import GRUCell


class InterestEvolution(keras.layers.Layer):
    """``h'_k = AUGRU(h'_{k-1}, f_k, a_k)`` for k = 1..K from ``h'_0 = 0``; returns ``h'_K``,
    where invalid (masked) steps carry the state through, so the result is the state after the
    last valid fact (valid facts are a prefix, oldest first).

    K is static (DIEN's ring size), so the loop is unrolled in the graph; the input half of
    the gates is computed once for facts shared by all candidates.

    Args:
        units: hidden size.
        form: "paper" (attention scales the update gate) or "official" (DIEN code).
    Shapes: facts [F, K, H] (F = 1 or N), attention [N, K], mask [F, K] -> [N, units].
    """

    def __init__(self, units: int, form: str = "paper", **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.form = form
        self.cell = GRUCell(self.units, form=form, name="augru_cell")

    def build(self, facts_shape, attention_shape=None, mask_shape=None):
        self.cell.build((None, facts_shape[-1]))

    def call(self, facts, attention, mask):
        steps = facts.shape[1]
        if steps is None:
            raise ValueError(f"InterestEvolution needs a static sequence length, got {facts.shape}")
        projected = self.cell.project(facts)  # [F, K, 3H]
        rows = tf.shape(attention)[0]
        h = tf.zeros([rows, self.units], dtype=facts.dtype)
        mask = tf.broadcast_to(mask, tf.shape(attention))
        width = 3 * self.units
        for k in range(steps):
            x_k = tf.broadcast_to(projected[:, k, :], [rows, width])
            h_new = self.cell.recur(x_k, h, attention[:, k])
            h = tf.where(mask[:, k : k + 1], h_new, h)
        return h

    def get_config(self):
        return {**super().get_config(), "units": self.units, "form": self.form}
