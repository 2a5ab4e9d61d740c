"""Dice activation (DIN paper, Zhou et al., KDD 2018, eq. 5) with moving statistics."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="uic")
class Dice(keras.layers.Layer):
    """Data-adaptive PReLU::

        f(s) = p(s) * s + (1 - p(s)) * alpha * s,   p(s) = sigmoid((s - mean) / sqrt(var + epsilon))

    Training uses the batch mean/variance (per channel) and updates moving averages, as
    BatchNorm does; inference uses the moving averages, so a served score never depends on
    the other rows of its batch (the official DIEN code always used batch statistics, which
    cannot be served). `alpha` is learned per channel.

    Args:
        epsilon: added to the variance (DIEN code 1e-9).
        momentum: moving-average momentum.
        alpha_initializer: of the per-channel `alpha` (DIN code: zeros).

    Input shape: [..., C] (rank >= 2, C known). Output shape: the same.
    """

    def __init__(self, epsilon: float = 1e-9, momentum: float = 0.99, alpha_initializer="zeros",
                 **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.alpha_initializer = keras.initializers.get(alpha_initializer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"Dice expects an input of rank >= 2 [..., C] with a known C, got shape "
                f"{tuple(input_shape)}"
            )
        channels = input_shape[-1]
        self.alpha = self.add_weight(shape=(channels,), initializer=self.alpha_initializer, name="alpha")
        self.moving_mean = self.add_weight(
            shape=(channels,), initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=(channels,), initializer="ones", trainable=False, name="moving_variance"
        )

    def call(self, inputs, training=None):
        if training:
            axes = list(range(len(inputs.shape) - 1))
            mean, variance = tf.nn.moments(inputs, axes=axes)
            self.moving_mean.assign(self.momentum * self.moving_mean + (1 - self.momentum) * mean)
            self.moving_variance.assign(
                self.momentum * self.moving_variance + (1 - self.momentum) * variance
            )
        else:
            mean, variance = self.moving_mean, self.moving_variance
        p = tf.sigmoid((inputs - mean) * tf.math.rsqrt(variance + self.epsilon))
        return p * inputs + (1.0 - p) * self.alpha * inputs

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "momentum": self.momentum,
            "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
        }
