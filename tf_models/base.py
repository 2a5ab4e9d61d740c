"""The UIC split shared by every model: a per-event recurrence (`cell`) folded left to right
gives `tower` and `step`; a target-dependent `score` on the state gives `head`; and
`full = head(tower(x))` by construction (docs/models.md, 'The model contract').

Exactness comes from one code path: `tower` is `step` from the initial state, and `step`
is a `tf.while_loop` over the same `cell` that applies one event at a time, where a padded
event leaves every state component untouched (``tf.where(mask, new, old)`` copies bits).
Training calls the same fold and the same `score`, so serving has no skew.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.config import ModelConfig
from tf_models.layers.id_hashing import IdHashing


class UICModel(keras.Model):
    """Base class. Subclasses define `state_layout`, `initial_components`, `cell`, `score`
    (and optionally `extra_losses` for training-only regularisers).

    Inputs of `call` (training/eval path, one candidate per row): dict with
    ``hist_item_ids``/``hist_cate_ids`` int64 [B, L], ``hist_len`` int32 [B],
    ``cand_item_ids``/``cand_cate_ids`` int64 [B], optionally ``neg_item_ids``/
    ``neg_cate_ids`` int64 [B, L] (sampled negatives for DIEN's auxiliary loss).
    Returns click probabilities [B].
    """

    model_name = "base"
    collects_outputs = False  # whether extra_losses needs the per-step cell outputs

    def __init__(self, config: ModelConfig | dict | None = None, **kwargs):
        super().__init__(name=kwargs.pop("name", self.model_name), **kwargs)
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        self.config = config or ModelConfig()
        self.emb_dim = self.config.embedding_dim_for(self.model_name)
        self.behaviour_dim = 2 * self.emb_dim
        self.item_hash = IdHashing(self.config.item_buckets, name="item_hash")
        self.cate_hash = IdHashing(self.config.cate_buckets, name="cate_hash")
        self.item_embedding = keras.layers.Embedding(
            self.config.item_buckets, self.emb_dim, name="item_embedding"
        )
        self.cate_embedding = keras.layers.Embedding(
            self.config.cate_buckets, self.emb_dim, name="cate_embedding"
        )
        self.item_embedding.build((None,))
        self.cate_embedding.build((None,))

    # ----- to be defined by subclasses ---------------------------------------------------
    def state_layout(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def initial_components(self, batch):
        raise NotImplementedError

    def cell(self, components, x):
        """One event for every row: (components, x [B, E]) -> (new components, output)."""
        raise NotImplementedError

    def score(self, components, cand, training=None):
        """Click logits [N] for candidate embeddings `cand` [N, E] against state rows
        (components with 1 row, broadcast, or N rows, aligned)."""
        raise NotImplementedError

    def extra_losses(self, components, outputs, x, mask, inputs):
        return []

    # ----- shared machinery --------------------------------------------------------------
    @property
    def state_size(self) -> int:
        return sum(size for _, size in self.state_layout())

    def embed(self, item_ids, cate_ids):
        return tf.concat(
            [
                self.item_embedding(self.item_hash(item_ids)),
                self.cate_embedding(self.cate_hash(cate_ids)),
            ],
            -1,
        )

    def pack(self, components):
        return tf.concat(list(components), -1)

    def unpack(self, state):
        sizes = [size for _, size in self.state_layout()]
        return tuple(tf.split(state, sizes, axis=-1))

    def pooled_history(self, esum, count):
        if self.config.history_pooling == "mean":
            return esum / tf.maximum(count, 1.0)
        return esum

    def fold(self, components, x, num_events, collect: bool = False):
        """Apply `cell` to events t = 0..T-1 of every row; steps t >= num_events are no-ops.
        Returns (components, outputs [B, T, ...] or None)."""
        steps = tf.shape(x)[1]
        mask = tf.sequence_mask(num_events, steps)
        xs = tf.transpose(x, [1, 0, 2])
        ms = tf.transpose(mask)
        outputs = tf.TensorArray(x.dtype, size=steps if collect else 0, dynamic_size=False)

        def body(t, comps, outs):
            new, out = self.cell(comps, xs[t])
            keep = ms[t][:, None]
            comps = tuple(tf.where(keep, n, o) for n, o in zip(new, comps, strict=True))
            if collect:
                outs = outs.write(t, out)
            return t + 1, comps, outs

        _, components, outputs = tf.while_loop(
            lambda t, *_: t < steps, body, (tf.constant(0), tuple(components), outputs)
        )
        seq = tf.transpose(outputs.stack(), [1, 0, 2]) if collect else None
        return components, seq

    @staticmethod
    def _check_lengths(ids, other_ids, lengths, ids_name, other_name, len_name):
        rows, width = tf.shape(ids)[0], tf.shape(ids)[1]
        return [
            tf.debugging.assert_equal(
                tf.shape(other_ids), tf.shape(ids),
                message=f"{ids_name} and {other_name} must have the same shape",
            ),
            tf.debugging.assert_equal(
                tf.shape(lengths)[0], rows,
                message=f"{len_name} must have one entry per row of {ids_name}",
            ),
            tf.debugging.assert_non_negative(lengths, message=f"{len_name} must be >= 0"),
            tf.debugging.assert_less_equal(
                lengths, width,
                message=f"{len_name} must be <= the number of columns of {ids_name}",
            ),
        ]

    # ----- the four parts ----------------------------------------------------------------
    def tower(self, hist_item_ids, hist_cate_ids, hist_len):
        """[B, L], [B, L], [B] -> state [B, S]: `step` from the initial state."""
        batch = tf.shape(hist_item_ids)[0]
        init = self.pack(self.initial_components(batch))
        names = ("hist_item_ids", "hist_cate_ids", "hist_len")
        return self._fold_checked(init, hist_item_ids, hist_cate_ids, hist_len, names)

    def step(self, state, item_ids, cate_ids, num_events):
        """[B, S], [B, T], [B, T], [B] -> [B, S]: the first num_events events of each row."""
        names = ("item_ids", "cate_ids", "num_events")
        return self._fold_checked(state, item_ids, cate_ids, num_events, names)

    def _fold_checked(self, state, item_ids, cate_ids, num_events, names):
        checks = self._check_lengths(item_ids, cate_ids, num_events, *names)
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(state)[0], tf.shape(item_ids)[0],
                message=f"state and {names[0]} must have the same number of rows",
            )
        )
        with tf.control_dependencies(checks):  # no op of the fold runs before the checks
            x = self.embed(item_ids, cate_ids)
            components = self.unpack(tf.identity(state))
            num_events = tf.cast(num_events, tf.int32)
        components, _ = self.fold(components, x, num_events)
        return self.pack(components)

    def head(self, state, cand_item_ids, cand_cate_ids):
        """state [B, S], candidates [B, N] -> ctr [B, N]: row b's candidates scored against
        row b's state, with inference statistics."""
        return self.head_rows(state, self.embed_candidates(state, cand_item_ids, cand_cate_ids))

    def embed_candidates(self, state, cand_item_ids, cand_cate_ids):
        """Checked candidate lookup: [B, N] ids -> embeddings [B, N, E]. No op of the lookup
        runs before the checks (the XLA-compiled export keeps them outside, as XLA drops
        `Assert`)."""
        checks = [
            tf.debugging.assert_equal(
                tf.shape(cand_item_ids), tf.shape(cand_cate_ids),
                message="cand_item_ids and cand_cate_ids must have the same shape",
            ),
            tf.debugging.assert_equal(
                tf.shape(state)[0], tf.shape(cand_item_ids)[0],
                message="state and cand_item_ids must have the same number of rows",
            ),
        ]
        with tf.control_dependencies(checks):
            return self.embed(cand_item_ids, cand_cate_ids)

    def head_rows(self, state, cand):
        """`head` after the lookup: state [B, S], embeddings [B, N, E] -> ctr [B, N].

        One user (B = 1, every ad request) scores its N candidates against the single state
        row, which `score` broadcasts. Several users (a server-side batch) are flattened to
        B*N candidate rows aligned with their repeated state rows: the same function per
        row, so a score does not depend on the rest of the batch."""
        rows, count = tf.shape(cand)[0], tf.shape(cand)[1]

        def one_user():
            return self.head_embedded(state, cand[0])[None]

        def aligned():
            flat = tf.reshape(cand, [-1, self.behaviour_dim])
            ctr = self.head_embedded(tf.repeat(state, count, axis=0), flat)
            return tf.reshape(ctr, [rows, count])

        return tf.cond(tf.equal(rows, 1), one_user, aligned)

    def head_embedded(self, state, cand):
        """Scores of candidate embeddings `cand` [N, E] against state rows [1, S] (broadcast)
        or [N, S] (aligned) -> ctr [N] (the part the serving export XLA-compiles)."""
        return tf.sigmoid(self.score(self.unpack(state), cand, training=False))

    def full(self, hist_item_ids, hist_cate_ids, hist_len, cand_item_ids, cand_cate_ids):
        """Architecture A: head(tower(history), candidates)."""
        return self.head(self.tower(hist_item_ids, hist_cate_ids, hist_len), cand_item_ids, cand_cate_ids)

    # ----- training path -------------------------------------------------------------------
    def call(self, inputs, training=None):
        items, cates = inputs["hist_item_ids"], inputs["hist_cate_ids"]
        lengths = tf.cast(inputs["hist_len"], tf.int32)
        x = self.embed(items, cates)
        init = self.initial_components(tf.shape(items)[0])
        collect = bool(training) and self.collects_outputs
        components, outputs = self.fold(init, x, lengths, collect=collect)
        cand = self.embed(inputs["cand_item_ids"], inputs["cand_cate_ids"])
        logits = self.score(components, cand, training=training)
        if training:
            mask = tf.sequence_mask(lengths, tf.shape(items)[1])
            for loss in self.extra_losses(components, outputs, x, mask, inputs):
                self.add_loss(loss)
        return tf.sigmoid(logits)

    def dummy_inputs(self, batch: int = 2, length: int = 3) -> dict:
        ids = tf.ones([batch, length], tf.int64)
        return {
            "hist_item_ids": ids,
            "hist_cate_ids": ids,
            "hist_len": tf.fill([batch], length),
            "cand_item_ids": tf.ones([batch], tf.int64),
            "cand_cate_ids": tf.ones([batch], tf.int64),
            "neg_item_ids": ids,
            "neg_cate_ids": ids,
        }

    def get_config(self):
        """Keras config: `from_config` passes it to the constructor, which takes the
        ModelConfig as a dict too."""
        return {**super().get_config(), "config": self.config.to_dict()}

    def build_from_config(self, config):
        """What `keras.saving.load_model` calls before loading the weights: the layers are
        built in `__init__`; one call on `dummy_inputs` creates the rest (as `build_model`)."""
        self(self.dummy_inputs(), training=False)
