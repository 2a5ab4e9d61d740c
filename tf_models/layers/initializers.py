"""Initializer arguments of the layers: resolved once, copied per weight."""

from __future__ import annotations

import keras


def fresh(initializer):
    """A new instance of `initializer` (a resolved Keras initializer).

    An unseeded Keras 3 initializer draws its seed when it is created and then returns the
    same values on every call, so one instance used for two weights of one shape would make
    them equal. Every weight and sublayer therefore gets its own copy."""
    if isinstance(initializer, keras.initializers.Initializer):
        return initializer.clone()
    return initializer
