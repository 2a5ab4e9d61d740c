"""tf_models.metrics.auc: the rank statistic, ties, one-class input."""

from __future__ import annotations

import numpy as np
import pytest

from tf_models.metrics import auc


def test_auc_orders_and_ties():
    assert auc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert auc([0.2, 0.8], [1, 0]) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == 0.875  # one tied pair: half credit


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 60).astype(float)  # many ties
    labels = rng.integers(0, 2, 60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert auc(scores, labels) == pytest.approx(pairs.mean())


def test_auc_of_one_class_is_none_and_lengths_must_match():
    assert auc([0.1, 0.2], [1, 1]) is None
    with pytest.raises(ValueError, match="one label per score, got 3 scores, 2 labels"):
        auc([0.1, 0.2, 0.3], [0, 1])
