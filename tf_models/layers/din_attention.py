"""DIN-style attention unit (DIN paper; DIEN eq. 8 as in its official code)."""

from __future__ import annotations

import keras
import tensorflow as tf

_MASKED = -1e9


class DinAttention(keras.layers.Layer):
    """Scores each fact ``f_k`` against a query ``q`` with an MLP and softmaxes over the valid
    facts::

        z_1 = sigmoid(Wq q + Wf f_k + Wp (q * f_k) + b)    # == Dense([q, f, q - f, q * f])
        z_j = sigmoid(Dense(z_{j-1})) ...,  s_k = Dense_1(z_last)
        a   = softmax_k(s_k over valid k)

    The first layer is the official ``Dense([q, f, q-f, q*f])`` rewritten with three kernels
    (``q - f`` is linear in q and f, so the function class is identical); this lets a facts
    tensor shared by all candidates ([1, K, H], one user in the serving head) be projected
    once instead of once per candidate. With `project_query` the query first goes through
    ``PReLU(Dense_H(q))`` (DIEN code), which also lets q and f differ in size.

    Args:
        units: hidden sizes of the scoring MLP, e.g. (80, 40).
        project_query: project the query to the fact size first.
    Shapes: query [N, Dq]; facts [F, K, H] with F = 1 (shared) or F = N; mask [F, K] bool.
    Returns the attention weights [N, K] (zero rows when a row has no valid fact).
    """

    def __init__(self, units=(80, 40), project_query: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(int(u) for u in units)
        if not self.units:
            raise ValueError("DinAttention needs at least one hidden layer size in `units`")
        self.project_query = bool(project_query)

    def build(self, query_shape, facts_shape):
        q_dim, f_dim = query_shape[-1], facts_shape[-1]
        if q_dim is None or f_dim is None:
            raise ValueError(
                f"DinAttention needs known feature sizes, got query {query_shape}, facts {facts_shape}"
            )
        if not self.project_query and q_dim != f_dim:
            raise ValueError(
                f"query size {q_dim} != fact size {f_dim}; use project_query=True to project it"
            )
        if self.project_query:
            self.query_dense = keras.layers.Dense(f_dim, name="query_dense")
            self.query_dense.build((None, q_dim))
            self.query_prelu = keras.layers.PReLU(
                alpha_initializer=keras.initializers.Constant(0.1), name="query_prelu"
            )
            self.query_prelu.build((None, f_dim))
        first = self.units[0]
        self.w_query = self.add_weight(shape=(f_dim, first), initializer="glorot_uniform", name="w_query")
        self.w_fact = self.add_weight(shape=(f_dim, first), initializer="glorot_uniform", name="w_fact")
        self.w_product = self.add_weight(
            shape=(f_dim, first), initializer="glorot_uniform", name="w_product"
        )
        self.b_first = self.add_weight(shape=(first,), initializer="zeros", name="b_first")
        self.hidden = []
        prev = first
        for i, size in enumerate(self.units[1:]):
            layer = keras.layers.Dense(size, activation="sigmoid", name=f"hidden_{i + 1}")
            layer.build((None, prev))
            self.hidden.append(layer)
            prev = size
        self.score = keras.layers.Dense(1, name="score")
        self.score.build((None, prev))

    def call(self, query, facts, mask):
        if self.project_query:
            query = self.query_prelu(self.query_dense(query))
        if facts.shape[0] == 1:
            z = self._first_layer_shared(query, facts[0])
        else:
            q = query[:, None, :]  # [N, 1, H]
            z = tf.sigmoid(
                tf.matmul(q, self.w_query)
                + tf.matmul(facts, self.w_fact)
                + tf.matmul(q * facts, self.w_product)
                + self.b_first
            )  # [N, K, units0]
        for layer in self.hidden:
            z = layer(z)
        scores = tf.squeeze(self.score(z), -1)  # [N, K]
        mask = tf.broadcast_to(mask, tf.shape(scores))
        weights = tf.nn.softmax(tf.where(mask, scores, _MASKED), axis=-1)
        return tf.where(mask, weights, tf.zeros_like(weights))

    def _first_layer_shared(self, query, facts):
        """First layer for one facts row [K, H] shared by the N queries [N, H]: the query
        part is [N, units] and the fact part (with the bias) [K, units]; only the product
        term is computed for all N * K pairs, as one [N*K, H] x [H, units] matmul."""
        first = self.units[0]
        rows, steps, width = tf.shape(query)[0], tf.shape(facts)[0], tf.shape(facts)[1]
        product = tf.reshape(query[:, None, :] * facts[None, :, :], [-1, width])
        pre = tf.reshape(tf.matmul(product, self.w_product), [rows, steps, first])
        shared = tf.matmul(facts, self.w_fact) + self.b_first  # [K, units]
        return tf.sigmoid(pre + tf.matmul(query, self.w_query)[:, None, :] + shared)

    def get_config(self):
        return {**super().get_config(), "units": list(self.units), "project_query": self.project_query}
