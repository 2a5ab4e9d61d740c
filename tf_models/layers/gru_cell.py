"""GRU cell (reset before the recurrent matmul, as TF1's GRUCell) with an optional attention
gate, so DIEN's extractor GRU and its AUGRU share one definition."""

from __future__ import annotations

import keras
import tensorflow as tf


class GRUCell(keras.layers.Layer):
    """One GRU step, paper convention (DIEN eqs. 2-5)::

        u  = sigmoid(W_u x + U_u h + b_u)          r = sigmoid(W_r x + U_r h + b_r)
        h~ = tanh(W_h x + U_h (r * h) + b_h)       h' = (1 - u) * h + u * h~

    With an attention score ``a`` (DIEN's AUGRU, eqs. 11-12) the update gate is scaled:
    ``form="paper"``: ``u' = a * u``; ``form="official"`` (the DIEN code's VecAttGRUCell):
    the keep gate ``1 - u`` is scaled, ``u' = 1 - (1 - a) * (1 - u)``.

    `project(x)` precomputes the input half ``W x + b`` so a caller that runs many steps
    over inputs known in advance (or shared by many rows) does that matmul once; ``call``
    = ``recur(project(x), h)``.

    Args:
        units: hidden size H.
        form: "paper" or "official" (only used when an attention score is given).
    Shapes: x [B, D], h [B, H], a [B] or [B, 1] -> h' [B, H].
    """

    def __init__(self, units: int, form: str = "paper", **kwargs):
        super().__init__(**kwargs)
        if form not in ("paper", "official"):
            raise ValueError(f"GRUCell form must be 'paper' or 'official', got {form!r}")
        self.units = int(units)
        self.form = form

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"GRUCell needs a known input size, got shape {input_shape}")
        h = self.units
        self.kernel = self.add_weight(shape=(dim, 3 * h), initializer="glorot_uniform", name="kernel")
        self.recurrent_gates = self.add_weight(
            shape=(h, 2 * h), initializer="orthogonal", name="recurrent_gates"
        )
        self.recurrent_candidate = self.add_weight(
            shape=(h, h), initializer="orthogonal", name="recurrent_candidate"
        )
        self.bias = self.add_weight(shape=(3 * h,), initializer="zeros", name="bias")

    def project(self, x):
        """Input half of all three gates: [..., D] -> [..., 3H]."""
        return tf.matmul(x, self.kernel) + self.bias

    def recur(self, x_proj, h, attention=None):
        units = self.units
        gates = tf.sigmoid(x_proj[..., : 2 * units] + tf.matmul(h, self.recurrent_gates))
        u, r = gates[..., :units], gates[..., units:]
        candidate = tf.tanh(x_proj[..., 2 * units :] + tf.matmul(r * h, self.recurrent_candidate))
        if attention is not None:
            a = tf.reshape(attention, [-1, 1])
            u = a * u if self.form == "paper" else 1.0 - (1.0 - a) * (1.0 - u)
        return (1.0 - u) * h + u * candidate

    def call(self, x, h, attention=None):
        return self.recur(self.project(x), h, attention)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "form": self.form}
