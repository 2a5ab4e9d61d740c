"""DIN-style attention unit (DIN paper; DIEN eq. 8 as in its official code)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.layers.initializers import fresh

_MASKED = -1e9


@keras.saving.register_keras_serializable(package="uic")
class DinAttention(keras.layers.Layer):
    """Scores each fact ``f_k`` against a query ``q`` with an MLP and softmaxes over the valid
    facts (DIN, Zhou et al., KDD 2018; DIEN, AAAI 2019, eq. 8 in its official code form)::

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
        kernel_initializer: every kernel (Wq, Wf, Wp, the hidden, score and query layers).
        bias_initializer: every bias.
        alpha_initializer: the query PReLU's alpha; None = constant 0.1 (DIEN code).

    Input shapes: query [N, Dq]; facts [F, K, H] with F = 1 (shared) or F = N; mask [F, K] bool.
    Output shape: attention weights [N, K] (zero rows when a row has no valid fact).
    """

    def __init__(
        self,
        units=(80, 40),
        project_query: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        alpha_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = tuple(int(u) for u in units)
        if not self.units:
            raise ValueError("DinAttention needs at least one hidden layer size in `units`, got ()")
        self.project_query = bool(project_query)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.alpha_initializer = keras.initializers.get(
            keras.initializers.Constant(0.1) if alpha_initializer is None else alpha_initializer
        )

    def _dense(self, size: int, name: str, activation=None) -> keras.layers.Dense:
        return keras.layers.Dense(
            size,
            activation=activation,
            kernel_initializer=fresh(self.kernel_initializer),
            bias_initializer=fresh(self.bias_initializer),
            name=name,
        )

    def build(self, query_shape, facts_shape, mask_shape=None):
        if len(query_shape) != 2 or len(facts_shape) != 3:
            raise ValueError(
                "DinAttention expects a rank-2 query [N, Dq] and rank-3 facts [F, K, H], got "
                f"shapes {tuple(query_shape)} and {tuple(facts_shape)}"
            )
        q_dim, f_dim = query_shape[-1], facts_shape[-1]
        if q_dim is None or f_dim is None:
            raise ValueError(
                f"DinAttention needs known feature sizes, got query {tuple(query_shape)}, "
                f"facts {tuple(facts_shape)}"
            )
        if not self.project_query and q_dim != f_dim:
            raise ValueError(
                f"query size {q_dim} != fact size {f_dim}; use project_query=True to project it"
            )
        if self.project_query:
            self.query_dense = self._dense(f_dim, "query_dense")
            self.query_dense.build((None, q_dim))
            self.query_prelu = keras.layers.PReLU(
                alpha_initializer=fresh(self.alpha_initializer), name="query_prelu"
            )
            self.query_prelu.build((None, f_dim))
        first = self.units[0]

        def kernel(name):
            return self.add_weight(
                shape=(f_dim, first), initializer=fresh(self.kernel_initializer), name=name
            )

        self.w_query = kernel("w_query")
        self.w_fact = kernel("w_fact")
        self.w_product = kernel("w_product")
        self.b_first = self.add_weight(
            shape=(first,), initializer=fresh(self.bias_initializer), name="b_first"
        )
        self.hidden = []
        prev = first
        for i, size in enumerate(self.units[1:]):
            layer = self._dense(size, f"hidden_{i + 1}", activation="sigmoid")
            layer.build((None, prev))
            self.hidden.append(layer)
            prev = size
        self.score = self._dense(1, "score")
        self.score.build((None, prev))

    def call(self, query, facts, mask):
        if mask.shape.rank != 2:
            raise ValueError(f"DinAttention expects a rank-2 mask [F, K], got shape {tuple(mask.shape)}")
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
        return {
            **super().get_config(),
            "units": list(self.units),
            "project_query": self.project_query,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
        }
