"""The UIC split is exact (docs/models.md, 'The model contract'): head(tower(x)) == full(x),
folding `step` over the events (one at a time or in random chunks) == tower over the whole
sequence, padding is a no-op, and no score depends on the other rows of its batch: row b of a
batched head or full call (B users, [B, N] candidates) is that user's call alone. Checked on
the trained tiny Keras models and again on their exported (XLA-compiled) SavedModels."""

from __future__ import annotations

import numpy as np
import pytest

from uic.contract import MODELS

TOL = 1e-5
LENGTHS = [0, 1, 5, 6, 7, 13, 64, 300]  # tiny ring K = 6: below, at and past the ring size


def _users(seed, lengths, width, garbage_padding=True):
    """Right-padded history batch; padded cells hold random ids (masking is by length)."""
    rng = np.random.default_rng(seed)
    b = len(lengths)
    cates = rng.integers(1, 30, (b, width))
    items = cates * 1000 + rng.integers(1, 40, (b, width))
    items[:, ::17] = rng.integers(10**9, 10**12, items[:, ::17].shape)  # ids far beyond the buckets
    lens = np.asarray(lengths, np.int32)
    if not garbage_padding:
        for i, n in enumerate(lens):
            items[i, n:] = 0
            cates[i, n:] = 0
    return items.astype(np.int64), cates.astype(np.int64), lens


def _cands(seed, n=9, rows=1):
    """Candidates [rows, n] (contract version 2: one row of candidates per user)."""
    rng = np.random.default_rng(seed)
    cates = rng.integers(1, 30, (rows, n))
    return (cates * 1000 + rng.integers(1, 40, (rows, n))).astype(np.int64), cates.astype(np.int64)


def _backend(request, name):
    return request.getfixturevalue(request.param)[name]


@pytest.fixture(params=["keras_parts", "saved_parts"])
def parts_of(request):
    return lambda name: _backend(request, name)


@pytest.mark.parametrize("name", MODELS)
def test_head_of_tower_equals_full(parts_of, name):
    parts = parts_of(name)
    rng = np.random.default_rng(1)
    lengths = LENGTHS + list(rng.integers(0, 301, 4))
    items, cates, lens = _users(2, lengths, 300)
    states = parts.tower(items, cates, lens)
    assert states.shape == (len(lengths), parts.state_size)
    ci, cc = _cands(3, rows=len(lengths))
    # every user in one batch (padded histories: test_padding_is_a_no_op shows padding
    # changes nothing), then the longest user alone (one request, B = 1: the served head's
    # other branch); a call per history length would compile the full model once per length
    via_state = parts.head(states, ci, cc)
    assert via_state.shape == ci.shape
    worst = float(np.abs(via_state - parts.full(items, cates, lens, ci, cc)).max())
    b = int(np.argmax(lens))
    alone = parts.full(items[b : b + 1], cates[b : b + 1], lens[b : b + 1], ci[b : b + 1],
                       cc[b : b + 1])
    worst = max(worst, float(np.abs(via_state[b : b + 1] - alone).max()))
    assert worst <= TOL, f"{name}: |head(tower(x)) - full(x)| = {worst}"


@pytest.mark.parametrize("name", MODELS)
def test_step_fold_equals_tower(parts_of, name):
    parts = parts_of(name)
    lengths = [0, 1, 6, 7, 40, 97, 300, 151]
    items, cates, lens = _users(4, lengths, 300)
    tower = parts.tower(items, cates, lens)
    b = len(lengths)
    # one event at a time (only the first 100 columns one by one to keep the test short,
    # then the rest in one chunk)
    state = parts.initial(b)
    for t in range(100):
        state = parts.step(state, items[:, t : t + 1], cates[:, t : t + 1], (lens > t).astype(np.int32))
    state = parts.step(state, items[:, 100:], cates[:, 100:], np.clip(lens - 100, 0, None).astype(np.int32))
    assert np.abs(state - tower).max() <= TOL
    # random chunk sizes, different per call
    rng = np.random.default_rng(5)
    state, t = parts.initial(b), 0
    while t < 300:
        size = int(rng.integers(1, 60))
        n = np.clip(lens - t, 0, size).astype(np.int32)
        state = parts.step(state, items[:, t : t + size], cates[:, t : t + size], n)
        t += size
    assert np.abs(state - tower).max() <= TOL
    # an empty step is the identity
    empty = np.zeros((b, 0), np.int64)
    assert np.array_equal(parts.step(tower, empty, empty, np.zeros(b, np.int32)), tower)


@pytest.mark.parametrize("name", MODELS)
def test_padding_is_a_no_op(parts_of, name):
    parts = parts_of(name)
    lengths = [0, 3, 12, 50]
    items, cates, lens = _users(6, lengths, 50, garbage_padding=False)
    base = parts.tower(items, cates, lens)
    wide_items, wide_cates, _ = _users(7, lengths, 90)  # garbage ids in the padding
    wide_items[:, :50], wide_cates[:, :50] = items, cates
    assert np.abs(parts.tower(wide_items, wide_cates, lens) - base).max() <= TOL
    # a step whose events are all padding leaves the state unchanged
    stepped = parts.step(base, wide_items[:, :7], wide_cates[:, :7], np.zeros(4, np.int32))
    assert np.array_equal(stepped, base)


@pytest.mark.parametrize("name", MODELS)
def test_scores_do_not_depend_on_the_batch(parts_of, name):
    parts = parts_of(name)
    lengths = [2, 30, 0, 77, 9]
    items, cates, lens = _users(8, lengths, 80)
    batch_states = parts.tower(items, cates, lens)
    for b in range(len(lengths)):
        alone = parts.tower(items[b : b + 1], cates[b : b + 1], lens[b : b + 1])
        assert np.abs(alone - batch_states[b : b + 1]).max() <= TOL
    ci, cc = _cands(9, n=12)
    together = parts.head(batch_states[1:2], ci, cc)[0]
    for j in range(ci.shape[1]):
        one = parts.head(batch_states[1:2], ci[:, j : j + 1], cc[:, j : j + 1])
        assert abs(float(one[0, 0]) - float(together[j])) <= TOL
    other = parts.head(batch_states[1:2], ci[:, :4][:, ::-1], cc[:, :4][:, ::-1])[0]
    assert np.abs(other[::-1] - together[:4]).max() <= TOL
    assert np.all((together > 0) & (together < 1))


# (users B, candidates N): one block, blocks of both XLA sizes, a row past one block
BATCHES = [(2, 1), (3, 8), (4, 13), (2, 100), (3, 150)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("rows,count", BATCHES)
def test_batched_head_rows_equal_single_rows(parts_of, name, rows, count):
    """Row b of head(state [B, S], candidates [B, N]) is head(state[b], candidates[b]) alone
    (what server-side batching relies on), and full == head(tower) per row."""
    parts = parts_of(name)
    lengths = [0, 3, 7, 40, 64][:rows]
    items, cates, lens = _users(20 + rows, lengths, 64)
    ci, cc = _cands(30 + count, n=count, rows=rows)  # different candidates per row
    states = parts.tower(items, cates, lens)
    batched = parts.head(states, ci, cc)
    batched_full = parts.full(items, cates, lens, ci, cc)
    assert batched.shape == batched_full.shape == (rows, count)
    for b in range(rows):
        alone = parts.head(states[b : b + 1], ci[b : b + 1], cc[b : b + 1])[0]
        assert np.abs(batched[b] - alone).max() <= TOL, f"{name}: head row {b} depends on its batch"
        assert np.abs(batched_full[b] - alone).max() <= TOL, f"{name}: full row {b} != head(tower)"


def test_saved_models_compute_what_keras_computes(keras_parts, saved_parts):
    items, cates, lens = _users(10, [0, 5, 40], 40)
    ci, cc = _cands(11, rows=3)
    for name in MODELS:
        k, s = keras_parts[name], saved_parts[name]
        assert np.abs(k.tower(items, cates, lens) - s.tower(items, cates, lens)).max() <= TOL
        states = k.tower(items, cates, lens)
        assert np.abs(k.head(states, ci, cc) - s.head(states, ci, cc)).max() <= TOL
        one = (states[1:2], ci[1:2], cc[1:2])
        assert np.abs(k.head(*one) - s.head(*one)).max() <= TOL


def test_dien_ring_holds_the_last_k_extractor_states(keras_parts):
    """After K+5 events the ring (read oldest first) is exactly the last K GRU states."""
    parts = keras_parts["dien"]
    model = parts.model
    k = model.config.ring_size
    n = k + 5
    items, cates, lens = _users(12, [n], n)
    h = parts.initial(1)
    gru_states = []
    for t in range(n):
        h = parts.step(h, items[:, t : t + 1], cates[:, t : t + 1], np.ones(1, np.int32))
        gru_states.append(model.unpack(h)[0].numpy()[0])
    state = parts.tower(items, cates, lens)
    _, ring, _, count = model.unpack(state)
    ordered, mask = model.ordered_ring(ring, count)
    assert float(count.numpy()[0, 0]) == n
    assert mask.numpy().all()
    assert np.abs(ordered.numpy()[0] - np.stack(gru_states[-k:])).max() <= TOL
    # fewer than K events: the valid prefix is in order, the rest masked
    items, cates, lens = _users(13, [3], 3)
    _, ring, _, count = model.unpack(parts.tower(items, cates, lens))
    ordered, mask = model.ordered_ring(ring, count)
    assert mask.numpy()[0].tolist() == [True] * 3 + [False] * (k - 3)
