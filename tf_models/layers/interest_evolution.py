"""DIEN's interest evolution layer: an AUGRU run over a (short) sequence of interest states."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.layers.gru_cell import GRUCell


def _check_facts(shape) -> None:
    shape = tuple(shape)
    if len(shape) != 3 or shape[1] is None:
        raise ValueError(
            f"InterestEvolution expects facts of rank 3 [F, K, H] with a static K, got shape {shape}"
        )


@keras.saving.register_keras_serializable(package="uic")
class InterestEvolution(keras.layers.Layer):
    """DIEN's interest evolution (Zhou et al., AAAI 2019, eqs. 11-12)::

        h'_k = AUGRU(h'_{k-1}, f_k, a_k)  for k = 1..K,  h'_0 = 0;  returns h'_K

    where invalid (masked) steps carry the state through, so the result is the state after the
    last valid fact (valid facts are a prefix, oldest first). The AUGRU is `GRUCell` with the
    attention score scaling its update gate.

    K is static (DIEN's ring size), so the loop is unrolled in the graph; the input half of
    the gates is computed once for facts shared by all candidates.

    Args:
        units: hidden size.
        form: "paper" (attention scales the update gate) or "official" (DIEN code).
        kernel_initializer, recurrent_initializer, bias_initializer: of the AUGRU cell
            (see `GRUCell`).

    Input shapes: facts [F, K, H] (F = 1: shared by all N rows, or F = N), attention [N, K],
    mask [F, K] bool.
    Output shape: [N, units].
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
        self.units = int(units)
        self.form = form
        self.cell = GRUCell(
            self.units,
            form=form,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            name="augru_cell",
        )

    def build(self, facts_shape, attention_shape=None, mask_shape=None):
        _check_facts(facts_shape)
        self.cell.build((None, facts_shape[-1]))

    def call(self, facts, attention, mask):
        _check_facts(facts.shape)
        steps = facts.shape[1]
        if attention.shape.rank != 2 or mask.shape.rank != 2:
            raise ValueError(
                "InterestEvolution expects attention [N, K] and mask [F, K], got shapes "
                f"{tuple(attention.shape)} and {tuple(mask.shape)}"
            )
        units = self.units
        projected = self.cell.project(facts)  # [F, K, 3H], once for all N rows when F = 1
        if facts.shape[0] == 1:
            projected = projected[0]  # [K, 3H]: per step a [3H] row shared by the N rows
        # Split and unstack once (not per step): per step only the [N, H] recurrence runs.
        gate_in, candidate_in = tf.split(projected, [2 * units, units], axis=-1)
        gate_in = tf.unstack(gate_in, axis=-2)  # K x [2H] or K x [F, 2H]
        candidate_in = tf.unstack(candidate_in, axis=-2)
        valid = tf.cast(mask, attention.dtype)  # [F, K]
        if self.form == "paper":
            # u' = (a * valid) * u: a masked step has u' = 0, so h is carried through exactly
            scores = tf.unstack((attention * valid)[:, :, None], axis=1)  # K x [N, 1]
            valids = [None] * steps
        else:
            scores = tf.unstack(attention[:, :, None], axis=1)
            valids = tf.unstack(valid[:, :, None], axis=1)  # K x [F, 1]
        kernels = self.cell.recurrent_kernels()
        h = None  # the zero state h'_0
        for k in range(steps):
            h = self.cell.step(gate_in[k], candidate_in[k], h, scores[k], valids[k], kernels)
        return h

    def get_config(self):
        cell = self.cell
        return {
            **super().get_config(),
            "units": self.units,
            "form": self.form,
            "kernel_initializer": keras.initializers.serialize(cell.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(cell.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(cell.bias_initializer),
        }
