"""Raw int64 ids -> embedding rows, inside the model, so callers never need vocabularies."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="uic")
class IdHashing(keras.layers.Layer):
    """Maps raw non-negative int64 ids into `num_buckets` rows; row 0 is reserved for padding::

        row(id) = 0                                  if id <= 0
                  1 + (id - 1) mod (num_buckets - 1)  otherwise

    Ids 1..num_buckets-1 map one to one (no collisions for compact id spaces such as the
    synthetic data); larger or unseen ids share a row with a smaller one (the "out of
    vocabulary" behaviour of a fixed-size hashed table). Deterministic across processes,
    unlike string hashing, so Beam jobs, servers and training agree. No weights.

    Args:
        num_buckets: table size including the padding row (>= 2).

    Input shape: any integer tensor. Output shape: the same, int32 rows.
    """

    def __init__(self, num_buckets: int, **kwargs):
        super().__init__(**kwargs)
        if int(num_buckets) < 2:
            raise ValueError(f"IdHashing needs num_buckets >= 2, got {num_buckets!r}")
        self.num_buckets = int(num_buckets)

    def call(self, ids):
        ids = tf.cast(ids, tf.int64)
        rows = tf.math.floormod(ids - 1, self.num_buckets - 1) + 1
        return tf.cast(tf.where(ids > 0, rows, tf.zeros_like(rows)), tf.int32)

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets}
