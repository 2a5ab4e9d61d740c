"""Evaluation metrics shared by training and the synthetic data statistics."""

from __future__ import annotations

import numpy as np


def auc(scores, labels) -> float | None:
    """ROC AUC by the rank statistic (tied scores get their average rank, i.e. half credit);
    None when the labels hold only one class."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(scores) != len(labels):
        raise ValueError(f"auc needs one label per score, got {len(scores)} scores, {len(labels)} labels")
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1, counts)
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
