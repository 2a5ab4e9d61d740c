"""Training examples from the event and impression files (formats in uic.events).

Each impression becomes one example: the user's events strictly before the impression time
(ordered by (time, event_id)), the last `max_len` of them, right-padded with 0; the
impression's item and category as the candidate; its label. The split is by time: the
earliest impressions train, the latest `eval_fraction` are held out.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf

from uic.event_files import read_events, read_impressions

FEATURES = ("hist_item_ids", "hist_cate_ids", "hist_len", "cand_item_ids", "cand_cate_ids")


@dataclasses.dataclass
class Examples:
    """Column arrays, one row per impression, sorted by impression time."""

    hist_item_ids: np.ndarray  # int64 [N, L]
    hist_cate_ids: np.ndarray  # int64 [N, L]
    hist_len: np.ndarray  # int32 [N]
    cand_item_ids: np.ndarray  # int64 [N]
    cand_cate_ids: np.ndarray  # int64 [N]
    label: np.ndarray  # float32 [N]
    time_ms: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index) -> Examples:
        return Examples(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def features(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FEATURES}


@dataclasses.dataclass
class TrainingData:
    train: Examples
    eval: Examples
    pool_items: np.ndarray  # distinct (item, cate) pairs seen in events, for negatives
    pool_cates: np.ndarray
    max_item_id: int
    max_cate_id: int
    num_events: int


def load_examples(data_dir, max_len: int, eval_fraction: float = 0.2) -> TrainingData:
    data_dir = Path(data_dir)
    events_path, imps_path = data_dir / "events.jsonl", data_dir / "impressions.jsonl"
    for path in (events_path, imps_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --data must hold events.jsonl and impressions.jsonl "
                "(create them with `python -m tf_models.data.synthetic --out DIR`)"
            )
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    per_user: dict[int, list] = defaultdict(list)
    num_events = 0
    for event in read_events(events_path):
        per_user[event.user_id].append((event.event_time_ms, event.event_id, event.item_id, event.category_id))
        num_events += 1
    histories = {}
    pairs = set()
    for user, rows in per_user.items():
        rows.sort()
        histories[user] = (
            [r[0] for r in rows],
            np.array([r[2] for r in rows], np.int64),
            np.array([r[3] for r in rows], np.int64),
        )
        pairs.update((r[2], r[3]) for r in rows)
    imps = sorted(read_impressions(imps_path), key=lambda i: (i.event_time_ms, i.user_id))
    if len(imps) < 10 or not pairs:
        raise ValueError(
            f"{data_dir}: need at least 10 impressions and some events, got {len(imps)} "
            f"impressions and {num_events} events"
        )
    n = len(imps)
    hist_items = np.zeros((n, max_len), np.int64)
    hist_cates = np.zeros((n, max_len), np.int64)
    hist_len = np.zeros(n, np.int32)
    empty = ([], np.zeros(0, np.int64), np.zeros(0, np.int64))
    for row, imp in enumerate(imps):
        times, items, cates = histories.get(imp.user_id, empty)
        end = bisect.bisect_left(times, imp.event_time_ms)  # strictly before the impression
        start = max(0, end - max_len)
        k = end - start
        hist_items[row, :k] = items[start:end]
        hist_cates[row, :k] = cates[start:end]
        hist_len[row] = k
    examples = Examples(
        hist_item_ids=hist_items,
        hist_cate_ids=hist_cates,
        hist_len=hist_len,
        cand_item_ids=np.array([i.item_id for i in imps], np.int64),
        cand_cate_ids=np.array([i.category_id for i in imps], np.int64),
        label=np.array([i.label for i in imps], np.float32),
        time_ms=np.array([i.event_time_ms for i in imps], np.int64),
    )
    cut = int(round(n * (1.0 - eval_fraction)))
    pool = np.array(sorted(pairs), np.int64)
    return TrainingData(
        train=examples.take(slice(0, cut)),
        eval=examples.take(slice(cut, n)),
        pool_items=pool[:, 0],
        pool_cates=pool[:, 1],
        max_item_id=int(max(pool[:, 0].max(), examples.cand_item_ids.max())),
        max_cate_id=int(max(pool[:, 1].max(), examples.cand_cate_ids.max())),
        num_events=num_events,
    )


def make_dataset(
    examples: Examples,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    negatives: tuple[np.ndarray, np.ndarray] | None = None,
) -> tf.data.Dataset:
    """(features, label) batches. With `negatives` (pool of (item, cate) pairs), every history
    position gets one uniformly sampled negative pair (DIEN's auxiliary loss)."""
    ds = tf.data.Dataset.from_tensor_slices((examples.features(), examples.label))
    if shuffle:
        ds = ds.shuffle(min(len(examples), 100_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if negatives is not None:
        pool_items = tf.constant(negatives[0])
        pool_cates = tf.constant(negatives[1])

        def add_negatives(features, label):
            shape = tf.shape(features["hist_item_ids"])
            pick = tf.random.uniform(shape, 0, tf.shape(pool_items)[0], dtype=tf.int32)
            features = dict(features)
            features["neg_item_ids"] = tf.gather(pool_items, pick)
            features["neg_cate_ids"] = tf.gather(pool_cates, pick)
            return features, label

        ds = ds.map(add_negatives)
    return ds.prefetch(2)
