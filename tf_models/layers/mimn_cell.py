"""MIMN's user-side recurrence: an NTM memory plus the Memory Induction Unit (MIU)."""

from __future__ import annotations

import keras
import tensorflow as tf

from tf_models.layers.gru_cell import GRUCell
from tf_models.layers.initializers import fresh

_EPS = 1e-8
_INITIALIZER_ARGS = (
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "params_initializer",
    "key_initializer",
    "read_initializer",
    "memory_initializer",
)


@keras.saving.register_keras_serializable(package="uic")
class MIMNCell(keras.layers.Layer):
    """One behaviour step of MIMN (Pi et al., KDD 2019, §4; official code `MIMNCell`).

    State (all per user): controller GRU state ``c``, last read vector ``r``, memory
    ``M`` [m, d], MIU channel states ``S`` [m, U], accumulated write weight ``g`` [m].

    Step with behaviour embedding ``x`` (d wide)::

        c' = GRU_ctrl(c, [x; r])
        p  = clip(Dense([c'; stop_grad(g / mur_scale)]), +-clip)   # head parameters
        w^r, w^w = softmax_i(beta * K(k, i)),  beta = 2 (softplus(b) + 1),
                   K(k, i) = (cos(k, key_M(i)) + cos(k, M(i))) / 2   # key strength: code
        MUR (code form): w^w <- sharpen(shift(w^w, softmax(s)), gamma), gamma = 4 (softplus + 1)
        r' = sum_i w^r(i) M(i)                                       # read the old memory
        MIU: i* = argmax_i w^r(i);  S'(i*) = GRU_miu(S(i*), [x; stop_grad(M(i*))])
        M' = M * (1 - w^w e^T) + w^w a^T,  e = sigmoid(.), a = tanh(.)   # erase / add
        g' = g + w^w

    `key_M` (tanh of a learned [m, d] matrix), the initial ``r`` and ``M`` are global
    parameters, not per user. `target_read` runs the same controller/addressing once with the
    candidate as input and returns the clipped read-out without writing (MIMN's target step).

    Also returns, per step, the increment ``mean_i(w^w(i) a)`` of the mean of MIMN's
    `sum_aggre` memory (the head's `mean_memory` feature), since that is linear in the steps.

    Args:
        slots: m, the number of memory slots and MIU channels.
        slot_dim: d, the behaviour embedding size (= memory slot width).
        controller_units: controller GRU size.
        miu_units: MIU GRU size U.
        clip_value: clip of the head parameters and of the target read-out.
        use_mur: memory utilisation regularisation (shift + sharpen of the write weights,
            the controller sees g).
        mur_scale: the controller reads ``g / mur_scale``.
        kernel_initializer, recurrent_initializer, bias_initializer: of the two GRUs (see
            `GRUCell`) and the read-out layer (kernel, bias).
        params_initializer: kernel of the head-parameter layer; None = normal with stddev
            controller_units ** -0.5 (code).
        key_initializer, read_initializer: of `key_M` and the initial read; None = normal with
            stddev 0.5.
        memory_initializer: of the initial memory (not trained); None = normal with stddev 1e-5.

    Input shapes (`call`): x [B, d], c [B, controller_units], r [B, d], memory [B, m, d],
    channels [B, m, U], g [B, m].
    Output: (c, r, memory, channels, g) of the same shapes and the `mean_memory` increment
    [B, d].
    """

    def __init__(
        self,
        slots: int,
        slot_dim: int,
        controller_units: int = 32,
        miu_units: int = 32,
        clip_value: float = 20.0,
        use_mur: bool = True,
        mur_scale: float = 400.0,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        params_initializer=None,
        key_initializer=None,
        read_initializer=None,
        memory_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(slots) < 2 or int(slot_dim) < 1:
            raise ValueError(f"MIMNCell needs slots >= 2 and slot_dim >= 1, got {slots!r}, {slot_dim!r}")
        self.slots, self.slot_dim = int(slots), int(slot_dim)
        self.controller_units, self.miu_units = int(controller_units), int(miu_units)
        self.clip_value, self.use_mur, self.mur_scale = float(clip_value), bool(use_mur), float(mur_scale)

        def initializer(value, default):
            return keras.initializers.get(default if value is None else value)

        normal = keras.initializers.RandomNormal
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.params_initializer = initializer(
            params_initializer, normal(stddev=self.controller_units**-0.5)
        )
        self.key_initializer = initializer(key_initializer, normal(stddev=0.5))
        self.read_initializer = initializer(read_initializer, normal(stddev=0.5))
        self.memory_initializer = initializer(memory_initializer, normal(stddev=1e-5))
        d = self.slot_dim
        # [read key d, read beta 1, write key d, write beta 1, (shift 3, gamma 1), erase d, add d]
        self.param_size = 4 * d + 2 + (4 if self.use_mur else 0)
        gru_initializers = dict(  # GRUCell copies them per weight
            kernel_initializer=self.kernel_initializer,
            recurrent_initializer=self.recurrent_initializer,
            bias_initializer=self.bias_initializer,
        )
        self.controller = GRUCell(self.controller_units, name="controller", **gru_initializers)
        self.miu = GRUCell(self.miu_units, name="miu_gru", **gru_initializers)
        self.params = keras.layers.Dense(
            self.param_size,
            kernel_initializer=fresh(self.params_initializer),
            bias_initializer=fresh(self.bias_initializer),
            name="head_params",
        )
        self.read_out = keras.layers.Dense(
            self.slot_dim,
            kernel_initializer=fresh(self.kernel_initializer),
            bias_initializer=fresh(self.bias_initializer),
            name="read_out",
        )

    def build(self, input_shape):
        if input_shape[-1] != self.slot_dim:
            raise ValueError(
                f"MIMNCell expects behaviour embeddings [B, {self.slot_dim}] (slot_dim), got "
                f"shape {tuple(input_shape)}"
            )
        m, d = self.slots, self.slot_dim
        self.controller.build((None, 2 * d))
        self.miu.build((None, 2 * d))
        self.params.build((None, self.controller_units + (m if self.use_mur else 0)))
        self.read_out.build((None, self.controller_units + d))
        self.key_memory = self.add_weight(
            shape=(m, d), initializer=fresh(self.key_initializer), name="key_memory"
        )
        self.read_init = self.add_weight(
            shape=(d,), initializer=fresh(self.read_initializer), name="read_init"
        )
        self.memory_init = self.add_weight(
            shape=(m, d),
            initializer=fresh(self.memory_initializer),
            trainable=False,
            name="memory_init",
        )

    # ----- pieces shared by the step and the target read ---------------------------------
    def initial_read(self):
        return tf.tanh(self.read_init)

    def initial_memory(self):
        return tf.tanh(self.memory_init)

    def _controller(self, x, c, r, g):
        c_new = self.controller(tf.concat([x, r], -1), c)
        p_in = tf.concat([c_new, tf.stop_gradient(g / self.mur_scale)], -1) if self.use_mur else c_new
        p = tf.clip_by_value(self.params(p_in), -self.clip_value, self.clip_value)
        return c_new, p

    def _address(self, key_raw, beta_raw, memory):
        """Content addressing with key strength: [B, d], [B, 1], [B, m, d] -> [B, m]."""
        key = tf.math.l2_normalize(tf.tanh(key_raw), -1, epsilon=_EPS)[:, None, :]
        beta = 2.0 * (tf.nn.softplus(beta_raw) + 1.0)
        keys = tf.math.l2_normalize(tf.tanh(self.key_memory), -1, epsilon=_EPS)
        mem = tf.math.l2_normalize(memory, -1, epsilon=_EPS)
        sim = 0.5 * (tf.reduce_sum(key * keys, -1) + tf.reduce_sum(key * mem, -1))
        return tf.nn.softmax(beta * sim, axis=-1)

    def _read(self, weights, memory):
        return tf.reduce_sum(weights[:, :, None] * memory, 1)

    # ----- one behaviour step -------------------------------------------------------------
    def call(self, x, c, r, memory, channels, g):
        """x [B, d], c [B, C], r [B, d], memory [B, m, d], channels [B, m, U], g [B, m] ->
        (c, r, memory, channels, g, mean_sum_increment [B, d])."""
        d = self.slot_dim
        c_new, p = self._controller(x, c, r, g)
        w_read = self._address(p[:, :d], p[:, d : d + 1], memory)
        w_write = self._address(p[:, d + 1 : 2 * d + 1], p[:, 2 * d + 1 : 2 * d + 2], memory)
        at = 2 * d + 2
        if self.use_mur:
            shift = tf.nn.softmax(p[:, at : at + 3], -1)
            gamma = 4.0 * (tf.nn.softplus(p[:, at + 3 : at + 4]) + 1.0)
            w_write = (
                shift[:, 0:1] * tf.roll(w_write, -1, axis=1)
                + shift[:, 1:2] * w_write
                + shift[:, 2:3] * tf.roll(w_write, 1, axis=1)
            )
            w_write = tf.pow(w_write + _EPS, gamma)
            w_write = w_write / tf.reduce_sum(w_write, -1, keepdims=True)
            at += 4
        erase = tf.sigmoid(p[:, at : at + d])
        add = tf.tanh(p[:, at + d : at + 2 * d])
        r_new = self._read(w_read, memory)
        # MIU: the channel with the top read weight takes a GRU step; the others keep state.
        chosen = tf.one_hot(tf.argmax(w_read, -1), self.slots, dtype=x.dtype)  # [B, m]
        chosen_state = tf.reduce_sum(chosen[:, :, None] * channels, 1)
        chosen_memory = tf.stop_gradient(tf.reduce_sum(chosen[:, :, None] * memory, 1))
        updated = self.miu(tf.concat([x, chosen_memory], -1), chosen_state)
        channels_new = tf.where(chosen[:, :, None] > 0, updated[:, None, :], channels)
        ww = w_write[:, :, None]
        memory_new = memory * (1.0 - ww * erase[:, None, :]) + ww * add[:, None, :]
        mean_sum_inc = tf.reduce_mean(tf.stop_gradient(ww) * add[:, None, :], 1)
        return c_new, r_new, memory_new, channels_new, g + w_write, mean_sum_inc

    def target_read(self, x, c, r, memory, g):
        """The candidate's read step (not persisted): [N, d] and state rows -> read-out [N, d]."""
        d = self.slot_dim
        c_new, p = self._controller(x, c, r, g)
        w_read = self._address(p[:, :d], p[:, d : d + 1], memory)
        read = self._read(w_read, memory)
        out = self.read_out(tf.concat([c_new, read], -1))
        return tf.clip_by_value(out, -self.clip_value, self.clip_value)

    def get_config(self):
        initializers = {
            name: keras.initializers.serialize(getattr(self, name))
            for name in _INITIALIZER_ARGS
        }
        return {
            **super().get_config(),
            "slots": self.slots,
            "slot_dim": self.slot_dim,
            "controller_units": self.controller_units,
            "miu_units": self.miu_units,
            "clip_value": self.clip_value,
            "use_mur": self.use_mur,
            "mur_scale": self.mur_scale,
            **initializers,
        }
