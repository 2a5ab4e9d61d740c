"""Every layer of tf_models.layers: output shapes, a config round trip (the rebuilt layer with
the same weights computes the same outputs, also through Keras' registered serialization),
initializer arguments that take effect and survive the round trip, and errors that name
what was received."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_models.layers import (
    MLP,
    Dice,
    DinAttention,
    GRUCell,
    IdHashing,
    InterestEvolution,
    MIMNCell,
)


def _floats(*shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float32)


def _mask(rows):
    return tf.constant(rows, tf.bool)


# name -> (layer factory, inputs, call kwargs, expected output shape(s))
CASES = {
    "id_hashing": (
        lambda: IdHashing(5),
        lambda: (tf.constant([[0, 1, 4, 5, 9, -3]], tf.int64),),
        {},
        (1, 6),
    ),
    "dice": (lambda: Dice(epsilon=1e-3, momentum=0.5), lambda: (_floats(4, 3),), {}, (4, 3)),
    "gru_cell": (
        lambda: GRUCell(4, form="official"),
        lambda: (_floats(2, 3), _floats(2, 4, seed=1), _floats(2, 1, seed=2)),
        {},
        (2, 4),
    ),
    "interest_evolution_shared_facts": (
        lambda: InterestEvolution(4),
        lambda: (_floats(1, 5, 4), tf.nn.softmax(_floats(3, 5, seed=1)),
                 _mask([[True, True, True, False, False]])),
        {},
        (3, 4),
    ),
    "interest_evolution_official": (
        lambda: InterestEvolution(4, form="official"),
        lambda: (_floats(3, 5, 4), tf.nn.softmax(_floats(3, 5, seed=1)),
                 _mask([[True] * 5, [True] * 2 + [False] * 3, [False] * 5])),
        {},
        (3, 4),
    ),
    "din_attention_shared_facts": (
        lambda: DinAttention((6, 3)),
        lambda: (_floats(3, 7), _floats(1, 5, 4, seed=1), _mask([[True] * 4 + [False]])),
        {},
        (3, 5),
    ),
    "din_attention_aligned": (
        lambda: DinAttention((6,), project_query=False),
        lambda: (_floats(2, 4), _floats(2, 5, 4, seed=1), _mask([[True] * 5, [False] * 5])),
        {},
        (2, 5),
    ),
    "mlp_dice": (lambda: MLP((6, 3), activation="dice"), lambda: (_floats(4, 5),), {}, (4,)),
    "mlp_prelu": (lambda: MLP((6,), activation="prelu"), lambda: (_floats(4, 5),), {}, (4,)),
    "mimn_cell": (
        lambda: MIMNCell(3, 4, controller_units=5, miu_units=6),
        lambda: (_floats(2, 4), _floats(2, 5, seed=1), _floats(2, 4, seed=2),
                 _floats(2, 3, 4, seed=3), _floats(2, 3, 6, seed=4), tf.zeros([2, 3])),
        {},
        [(2, 5), (2, 4), (2, 3, 4), (2, 3, 6), (2, 3), (2, 4)],
    ),
    "mimn_cell_without_mur": (
        lambda: MIMNCell(3, 4, controller_units=5, miu_units=6, use_mur=False),
        lambda: (_floats(2, 4), _floats(2, 5, seed=1), _floats(2, 4, seed=2),
                 _floats(2, 3, 4, seed=3), _floats(2, 3, 6, seed=4), tf.zeros([2, 3])),
        {},
        [(2, 5), (2, 4), (2, 3, 4), (2, 3, 6), (2, 3), (2, 4)],
    ),
}


def _shapes(out):
    if isinstance(out, (tuple, list)):
        return [tuple(t.shape) for t in out]
    return tuple(out.shape)


def _assert_same(a, b):
    for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b), strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_output_shape(case):
    factory, inputs, kwargs, expected = CASES[case]
    assert _shapes(factory()(*inputs(), **kwargs)) == expected


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("route", ["from_config", "keras_serialization"])
def test_layer_config_round_trip(case, route):
    factory, inputs, kwargs, _ = CASES[case]
    layer = factory()
    args = inputs()
    out = layer(*args, **kwargs)
    config = json.loads(json.dumps(layer.get_config()))  # the config is plain JSON
    if route == "from_config":
        clone = layer.__class__.from_config(config)
    else:
        record = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
        assert record["registered_name"] == f"uic>{layer.__class__.__name__}"
        clone = keras.saving.deserialize_keras_object(record)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone(*args, **kwargs)  # builds
    clone.set_weights(layer.get_weights())
    _assert_same(clone(*args, **kwargs), out)


def test_dice_moving_statistics_survive_the_round_trip():
    """Dice trained a little (moving statistics updated) and rebuilt from its config with the
    same weights scores inference inputs alike."""
    layer = Dice(momentum=0.5)
    x = _floats(8, 3) * 3.0 + 1.0
    layer(x, training=True)
    assert not np.allclose(layer.moving_mean.numpy(), 0.0)
    clone = Dice.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    _assert_same(clone(x, training=False), layer(x, training=False))


def test_initializer_arguments_take_effect_and_round_trip():
    gru = GRUCell(3, kernel_initializer="ones", recurrent_initializer="zeros",
                  bias_initializer=keras.initializers.Constant(0.5))
    gru.build((None, 2))
    clone = GRUCell.from_config(gru.get_config())
    clone.build((None, 2))
    for cell in (gru, clone):
        assert np.all(cell.kernel.numpy() == 1.0)
        assert np.all(cell.recurrent_gates.numpy() == 0.0)
        assert np.all(cell.bias.numpy() == 0.5)
    attention = DinAttention((4,), kernel_initializer="ones", alpha_initializer="zeros")
    attention.build((None, 3), (None, 5, 3))
    assert np.all(attention.query_dense.kernel.numpy() == 1.0)
    assert np.all(attention.query_prelu.alpha.numpy() == 0.0)
    mlp = MLP((4,), activation="prelu", bias_initializer="ones")
    mlp.build((None, 3))
    assert np.all(mlp.acts[0].alpha.numpy() == np.float32(0.1))  # the PReLU default
    assert np.all(mlp.logit.bias.numpy() == 1.0)
    cell = MIMNCell(2, 3, controller_units=4, miu_units=4,
                    memory_initializer="ones", read_initializer="zeros")
    cell.build((None, 3))
    assert np.all(cell.memory_init.numpy() == 1.0) and np.all(cell.read_init.numpy() == 0.0)
    assert np.all(MIMNCell.from_config(cell.get_config()).memory_initializer(shape=(2,)) == 1.0)


def test_one_initializer_gives_each_weight_its_own_values():
    """An unseeded Keras 3 initializer repeats its values; the layers copy it per weight."""
    attention = DinAttention((4,), project_query=False)
    attention.build((None, 3), (None, 5, 3))
    assert not np.allclose(attention.w_query.numpy(), attention.w_fact.numpy())
    assert not np.allclose(attention.w_fact.numpy(), attention.w_product.numpy())
    cell = MIMNCell(2, 3, controller_units=4, miu_units=4)
    cell.build((None, 3))
    assert not np.allclose(cell.key_memory.numpy()[0], cell.read_init.numpy())


def test_id_hashing_maps_ids_to_rows():
    rows = IdHashing(5)(tf.constant([[0, 1, 4, 5, 9, -3]], tf.int64)).numpy()
    assert rows.tolist() == [[0, 1, 4, 1, 1, 0]]


def test_din_attention_weights_are_a_softmax_over_valid_facts():
    query, facts = _floats(3, 7), _floats(1, 5, 4, seed=1)
    weights = DinAttention((6, 3))(query, facts, _mask([[True] * 4 + [False]])).numpy()
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    assert np.all(weights[:, 4] == 0.0)
    empty = DinAttention((6, 3))(query, facts, _mask([[False] * 5])).numpy()
    assert np.all(empty == 0.0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: IdHashing(1), "num_buckets >= 2, got 1"),
        (lambda: Dice()(tf.constant([1.0, 2.0])), r"rank >= 2 \[..., C\].*got shape \(2,\)"),
        (lambda: GRUCell(3, form="vec"), "'paper' or 'official', got 'vec'"),
        (lambda: GRUCell(0), "units >= 1, got 0"),
        (lambda: InterestEvolution(3)(_floats(5, 3), _floats(2, 5), _mask([[True] * 5])),
         r"rank 3 \[F, K, H\].*got shape \(5, 3\)"),
        (lambda: DinAttention(()), "at least one hidden layer size"),
        (lambda: DinAttention((4,))(_floats(2, 3), _floats(2, 3), _mask([[True] * 3])),
         r"rank-3 facts \[F, K, H\], got shapes \(2, 3\) and \(2, 3\)"),
        (lambda: DinAttention((4,), project_query=False)(
            _floats(2, 3), _floats(1, 5, 4), _mask([[True] * 5])),
         "query size 3 != fact size 4; use project_query=True"),
        (lambda: DinAttention((4,))(_floats(2, 3), _floats(1, 5, 4), _mask([True] * 5)),
         r"rank-2 mask \[F, K\], got shape \(5,\)"),
        (lambda: MLP((4,), activation="relu"), "one of \\('dice', 'prelu'\\), got 'relu'"),
        (lambda: MLP((4,))(_floats(2, 3, 5)), r"rank-2 input \[N, D\].*got shape \(2, 3, 5\)"),
        (lambda: MIMNCell(1, 4), "slots >= 2 and slot_dim >= 1, got 1, 4"),
        (lambda: MIMNCell(2, 4).build((None, 5)), r"\[B, 4\] \(slot_dim\), got shape \(None, 5\)"),
    ],
)
def test_layers_reject_bad_input_with_what_they_received(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()
