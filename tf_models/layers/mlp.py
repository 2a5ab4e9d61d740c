"""The CTR tower on top of the features: BatchNorm, Dense layers with Dice or PReLU, a logit."""

from __future__ import annotations

import keras

from tf_models.layers.dice import Dice
from tf_models.layers.initializers import fresh

ACTIVATIONS = ("dice", "prelu")


@keras.saving.register_keras_serializable(package="uic")
class MLP(keras.layers.Layer):
    """The fully connected network of both papers (FCN 200 x 80 x 1 by default)::

        logit = Dense_1(act_n(Dense_n( ... act_1(Dense_1(BN(x))) ... )))

    BatchNorm uses normal training semantics and its moving statistics at inference (the
    official codes' BN never updated its statistics, i.e. was an affine layer); with Dice
    this makes a served score independent of the rest of its batch.

    Args:
        units: hidden sizes, e.g. (200, 80) (both papers).
        activation: "dice" (DIEN) or "prelu" (MIMN).
        dice_epsilon: Dice's variance epsilon.
        momentum: moving-average momentum of the BatchNorm and Dice statistics.
        kernel_initializer, bias_initializer: of every Dense layer.
        alpha_initializer: of the activations' alpha; None = the activation's own default
            (Dice: zeros; PReLU: constant 0.1, as in the MIMN code).

    Input shape: [N, D] with D known. Output shape: [N] logits.
    """

    def __init__(
        self,
        units=(200, 80),
        activation: str = "dice",
        dice_epsilon: float = 1e-9,
        momentum: float = 0.9,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        alpha_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.units = tuple(int(u) for u in units)
        self.activation = activation
        self.dice_epsilon = float(dice_epsilon)
        self.momentum = float(momentum)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if alpha_initializer is None:
            alpha_initializer = "zeros" if activation == "dice" else keras.initializers.Constant(0.1)
        self.alpha_initializer = keras.initializers.get(alpha_initializer)

    def _dense(self, size: int, name: str) -> keras.layers.Dense:
        return keras.layers.Dense(
            size,
            kernel_initializer=fresh(self.kernel_initializer),
            bias_initializer=fresh(self.bias_initializer),
            name=name,
        )

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                f"MLP expects a rank-2 input [N, D] with a known D, got shape {tuple(input_shape)}"
            )
        dim = input_shape[-1]
        self.norm = keras.layers.BatchNormalization(momentum=self.momentum, name="input_bn")
        self.norm.build((None, dim))
        self.dense, self.acts = [], []
        for i, size in enumerate(self.units):
            dense = self._dense(size, f"dense_{i}")
            dense.build((None, dim))
            alpha = fresh(self.alpha_initializer)
            if self.activation == "dice":
                act = Dice(self.dice_epsilon, self.momentum, alpha_initializer=alpha, name=f"dice_{i}")
            else:
                act = keras.layers.PReLU(alpha_initializer=alpha, name=f"prelu_{i}")
            act.build((None, size))
            self.dense.append(dense)
            self.acts.append(act)
            dim = size
        self.logit = self._dense(1, "logit")
        self.logit.build((None, dim))

    def call(self, x, training=None):
        x = self.norm(x, training=training)
        for dense, act in zip(self.dense, self.acts, strict=True):
            x = dense(x)
            x = act(x, training=training) if self.activation == "dice" else act(x)
        return self.logit(x)[:, 0]

    def get_config(self):
        return {
            **super().get_config(),
            "units": list(self.units),
            "activation": self.activation,
            "dice_epsilon": self.dice_epsilon,
            "momentum": self.momentum,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
        }
