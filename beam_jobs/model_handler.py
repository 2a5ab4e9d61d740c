"""RunInference model handler for the exported multi-input `tower` and `step` signatures.

Why a custom handler: Beam's `TFModelHandlerTensor` / `TFModelHandlerNumpy` load the model
with `tf.keras.models.load_model` (Keras 3 refuses a plain TF SavedModel) and call it with
ONE stacked tensor (`model(tf.stack(batch))`). Our parts take several named inputs of
different dtypes and ragged lengths (`hist_item_ids`, `hist_cate_ids`, `hist_len` ...), so
this handler loads the SavedModel with `tf.saved_model.load`, takes the `serving_default`
signature, and builds each batch from per-user examples by right-padding the sequence
inputs (padding is a no-op: docs/models.md, 'The model contract'). Inputs and dtypes come from
`uic.contract.SIGNATURES`, so the handler cannot drift from the exports.

An example is a dict keyed by the signature's input names holding ONE row: sequences as 1-D
arrays of their valid length, scalars (`hist_len`, `num_events`) as ints, `state` as a 1-D
float32 array. Wrap the handler in `KeyedModelHandler` to carry the user id and watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from uic import contract

_LOG = logging.getLogger(__name__)


class LoadedSignature:
    """A loaded SavedModel and its `serving_default` function (keeps the object alive)."""

    def __init__(self, path: str | Path, part: str):
        import tensorflow as tf  # imported here: TF is heavy and only workers need it

        self.path = str(path)
        self.part = part
        try:
            self._root = tf.saved_model.load(self.path)
        except OSError as err:
            raise FileNotFoundError(
                f"cannot load the {part} SavedModel at {self.path}: {err}. "
                "Check --saved_models / --version, or run `make export`."
            ) from None
        signatures = getattr(self._root, "signatures", {})
        if contract.SIGNATURE_NAME not in signatures:
            raise ValueError(
                f"{self.path} has no '{contract.SIGNATURE_NAME}' signature "
                f"(found {sorted(signatures)}): not a UIC {part} export"
            )
        self.fn = signatures[contract.SIGNATURE_NAME]
        self.inputs, outputs = contract.SIGNATURES[part]
        self.output_name = outputs[0].name

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        import tensorflow as tf

        tensors = {k: tf.constant(v) for k, v in feeds.items()}
        return self.fn(**tensors)[self.output_name].numpy()


def stack_examples(part: str, batch: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Batch one-row examples into the signature's input arrays, right-padding sequences.

    Sequence inputs ([B, L] / [B, T]) are padded with 0 to the longest row (at least 1, so
    an empty history, e.g. the cold-start state, is a valid [B, 1] input with length 0).
    """
    if not batch:
        raise ValueError("cannot stack an empty batch")
    inputs, _ = contract.SIGNATURES[part]
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        rows = [ex[spec.name] for ex in batch]
        if len(spec.shape) == 1:  # per-row scalar: lengths and counts
            feeds[spec.name] = np.asarray(rows, dtype=spec.dtype)
        elif spec.shape[1] == "S":  # fixed-size state rows
            feeds[spec.name] = np.stack([np.asarray(r, dtype=spec.dtype) for r in rows])
        else:  # variable-length sequence rows
            width = max(1, max(len(r) for r in rows))
            out = np.zeros((len(rows), width), dtype=spec.dtype)
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            feeds[spec.name] = out
    return feeds


def length_buckets(part: str, batch: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """Row indices of `batch` grouped so that no row is padded to more than twice its length
    (lengths 1, 2-3, 4-7, ...): one model call per group. A stacked batch runs every row to
    the longest history, so on a heavy-tailed log (Taobao's) one 5,000-event user in a batch
    of 64 would cost 64 x 5,000 steps."""
    key = "hist_len" if part == "tower" else "num_events"
    groups: dict[int, list[int]] = {}
    for i, example in enumerate(batch):
        groups.setdefault(int(example[key]).bit_length(), []).append(i)
    return [groups[k] for k in sorted(groups)]


class SignatureModelHandler(ModelHandler[dict, PredictionResult, LoadedSignature]):
    """ModelHandler for one exported part (`tower` or `step`) of a UIC model version.

    Args:
      saved_models: export root (`<root>/<model>_<part>/<version>/`).
      model, part, version: which export to load.
      max_batch_size: RunInference batch size (users per model call).
    Each PredictionResult's `inference` is the float32 [S] state of that row.
    """

    def __init__(self, saved_models: str | Path, model: str, part: str, version: int, *,
                 min_batch_size: int = 1, max_batch_size: int = 64):
        if part not in ("tower", "step"):
            raise ValueError(f"SignatureModelHandler serves 'tower' or 'step', got {part!r}")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.path = str(contract.export_dir(saved_models, model, part, version))
        self.part = part

    def load_model(self) -> LoadedSignature:
        _LOG.info("loading %s", self.path)
        return LoadedSignature(self.path, self.part)

    def run_inference(self, batch: Sequence[dict], model: LoadedSignature,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        states: list = [None] * len(batch)
        for rows in length_buckets(self.part, batch):
            out = model(stack_examples(self.part, [batch[i] for i in rows]))
            for j, i in enumerate(rows):
                states[i] = out[j]
        return [PredictionResult(ex, states[i], self.path) for i, ex in enumerate(batch)]

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(int(np.asarray(v).nbytes) for ex in batch for v in ex.values())

    def get_metrics_namespace(self) -> str:
        return f"uic_{self.part}"


def tower_example(item_ids: Sequence[int], cate_ids: Sequence[int]) -> dict[str, Any]:
    """One user's history (oldest first) as a `tower` example."""
    return {
        "hist_item_ids": np.asarray(item_ids, dtype=np.int64),
        "hist_cate_ids": np.asarray(cate_ids, dtype=np.int64),
        "hist_len": len(item_ids),
    }


def step_example(state: np.ndarray, item_ids: Sequence[int], cate_ids: Sequence[int]
                 ) -> dict[str, Any]:
    """A stored state plus the user's new events (oldest first) as a `step` example."""
    return {
        "state": np.asarray(state, dtype=np.float32),
        "item_ids": np.asarray(item_ids, dtype=np.int64),
        "cate_ids": np.asarray(cate_ids, dtype=np.int64),
        "num_events": len(item_ids),
    }
