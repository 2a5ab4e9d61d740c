"""The CTR tower on top of the features: BatchNorm, Dense layers with Dice or PReLU, a logit."""

from __future__ import annotations

import keras


class MLP(keras.layers.Layer):
    """``BN -> [Dense(u) -> act] for u in units -> Dense(1)`` returning the click logit.

    BatchNorm uses normal training semantics and its moving statistics at inference (the
    official codes' BN never updated its statistics, i.e. was an affine layer); with Dice
    this makes a served score independent of the rest of its batch.

    Args:
        units: hidden sizes, e.g. (200, 80) (both papers).
        activation: "dice" (DIEN) or "prelu" (MIMN).
        dice_epsilon: Dice's variance epsilon.
        momentum: moving-average momentum of the BatchNorm and Dice statistics.
    Shapes: [N, D] -> [N] logits.
    """

    def __init__(self, units=(200, 80), activation: str = "dice", dice_epsilon: float = 1e-9,
                 momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if activation not in ("dice", "prelu"):
            raise ValueError(f"MLP activation must be 'dice' or 'prelu', got {activation!r}")
        self.units = tuple(int(u) for u in units)
        self.activation = activation
        self.dice_epsilon = float(dice_epsilon)
        self.momentum = float(momentum)

    def build(self, input_shape):
        from tf_models.layers.dice import Dice

        dim = input_shape[-1]
        self.norm = keras.layers.BatchNormalization(momentum=self.momentum, name="input_bn")
        self.norm.build((None, dim))
        self.dense, self.acts = [], []
        for i, size in enumerate(self.units):
            dense = keras.layers.Dense(size, name=f"dense_{i}")
            dense.build((None, dim))
            if self.activation == "dice":
                act = Dice(epsilon=self.dice_epsilon, momentum=self.momentum, name=f"dice_{i}")
            else:
                act = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.1), name=f"prelu_{i}")
            act.build((None, size))
            self.dense.append(dense)
            self.acts.append(act)
            dim = size
        self.logit = keras.layers.Dense(1, name="logit")
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
        }
