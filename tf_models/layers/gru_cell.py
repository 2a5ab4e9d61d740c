"""GRU cell (reset before the recurrent matmul, as TF1's GRUCell) with an optional attention
gate, so DIEN's extractor GRU and its AUGRU share one definition."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.layers.initializers import fresh


@keras.saving.register_keras_serializable(package="uic")
class GRUCell(keras.layers.Layer):
    """One GRU step, paper convention (DIEN, Zhou et al., AAAI 2019, eqs. 2-5)::

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
        kernel_initializer: input kernel W [D, 3H].
        recurrent_initializer: recurrent kernels U (gates [H, 2H], candidate [H, H]).
        bias_initializer: bias b [3H].

    Input shapes: x [B, D], h [B, H], optional attention a [B] or [B, 1].
    Output shape: h' [B, H].
    """

    def __init__(
        self,
        units: int,
        form: str = "paper",
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if form not in ("paper", "official"):
            raise ValueError(f"GRUCell form must be 'paper' or 'official', got {form!r}")
        if int(units) < 1:
            raise ValueError(f"GRUCell needs units >= 1, got {units!r}")
        self.units = int(units)
        self.form = form
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"GRUCell needs a known input size, got shape {input_shape}")
        h = self.units
        self.kernel = self.add_weight(
            shape=(dim, 3 * h), initializer=fresh(self.kernel_initializer), name="kernel"
        )
        self.recurrent_gates = self.add_weight(
            shape=(h, 2 * h), initializer=fresh(self.recurrent_initializer), name="recurrent_gates"
        )
        self.recurrent_candidate = self.add_weight(
            shape=(h, h), initializer=fresh(self.recurrent_initializer), name="recurrent_candidate"
        )
        self.bias = self.add_weight(
            shape=(3 * h,), initializer=fresh(self.bias_initializer), name="bias"
        )

    def project(self, x):
        """Input half of all three gates: [..., D] -> [..., 3H]."""
        return tf.matmul(x, self.kernel) + self.bias

    def recur(self, x_proj, h, attention=None):
        gate_in, candidate_in = tf.split(x_proj, [2 * self.units, self.units], axis=-1)
        return self.step(gate_in, candidate_in, h, attention)

    def recurrent_kernels(self):
        """The two recurrent kernels as tensors: read once by a caller running many steps."""
        return tf.convert_to_tensor(self.recurrent_gates), tf.convert_to_tensor(self.recurrent_candidate)

    def step(self, gate_in, candidate_in, h, attention=None, valid=None, kernels=None):
        """`recur` with the projected input already split into its gate part [.., 2H] and
        candidate part [.., H], so a caller running many steps splits once, not per step.

        * ``h=None`` means the zero state: the recurrent matmuls are skipped (the same
          result, since ``0 @ U = 0``).
        * Rank-1 inputs ([2H], [H]: one row shared by all B rows) are added with
          ``bias_add``, which grappler fuses into the matmul.
        * ``valid`` [B, 1] (1.0 or 0.0) multiplies the update gate: 0 leaves ``h``
          bit-for-bit unchanged (``(1 - 0) h + 0 h~ = h``) without a select op.
        * ``attention`` is [B] or [B, 1]; ``kernels`` = `recurrent_kernels()` if read already.
        """
        units = self.units
        u_gates, u_candidate = kernels if kernels is not None else self.recurrent_kernels()

        def plus(x, inputs):
            return tf.nn.bias_add(x, inputs) if inputs.shape.rank == 1 else x + inputs

        if h is None:
            u = tf.sigmoid(gate_in[..., :units])
            candidate = tf.tanh(candidate_in)
        else:
            u, r = tf.split(tf.sigmoid(plus(tf.matmul(h, u_gates), gate_in)), 2, axis=-1)
            candidate = tf.tanh(plus(tf.matmul(r * h, u_candidate), candidate_in))
        if attention is not None:
            a = attention if attention.shape.rank == 2 else tf.reshape(attention, [-1, 1])
            u = a * u if self.form == "paper" else 1.0 - (1.0 - a) * (1.0 - u)
        if valid is not None:
            u = valid * u
        if h is None:
            return u * candidate
        return (1.0 - u) * h + u * candidate

    def call(self, x, h, attention=None):
        return self.recur(self.project(x), h, attention)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "form": self.form,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
