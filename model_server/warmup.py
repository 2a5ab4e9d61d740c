"""Replay `assets.extra/tf_serving_warmup_requests` before a version is marked AVAILABLE.

The file is a TFRecord of `tensorflow.serving.PredictionLog`. Running those
requests traces and initialises everything the first real request would otherwise pay for,
so a hot swap does not show a latency spike. Any failure fails the load, as in TF Serving
(docs/model_server.md, 'Warm-up').
"""

from __future__ import annotations

import time
from pathlib import Path

from tensorflow_serving.apis import prediction_log_pb2

from model_server import inference
from model_server.errors import ServingError

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_RECORDS = 1000


def read_records(path: Path):
    """Yield raw TFRecord payloads; corrupt files raise DATA_LOSS."""
    import tensorflow as tf

    try:
        for record in tf.data.TFRecordDataset(str(path)):
            yield record.numpy()
    except tf.errors.DataLossError as exc:
        raise ServingError("DATA_LOSS", f"{exc.message}. Please verify your warmup data is in "
                           f"TFRecord format.") from None


def run_warmup(loaded, iterations: int = 1, metrics=None) -> int:
    """Replay the warm-up records of `loaded`; returns how many records were read."""
    path = loaded.path / WARMUP_FILE
    if not path.is_file():
        return 0
    started = time.monotonic()
    count = 0
    status = "OK"
    try:
        for raw in read_records(path):
            count += 1
            if count > MAX_RECORDS:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Number of warmup records exceeds the maximum "
                                   f"({MAX_RECORDS}) at {path}")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(raw)
            except Exception:  # noqa: BLE001
                raise ServingError("INVALID_ARGUMENT", f"Failed to parse warmup record "
                                   f"{count} of {path}") from None
            for _ in range(max(iterations, 1)):
                _replay(loaded, log)
    except ServingError as exc:
        status = exc.code
        raise ServingError(exc.code, f"warm-up of {loaded.path} failed: {exc.message}") from None
    finally:
        if metrics is not None:
            metrics.warmup(str(loaded.path), status, count, (time.monotonic() - started) * 1e6)
    return count


def _replay(loaded, log) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        inference.predict(loaded, log.predict_log.request)
    elif kind == "classify_log":
        inference.classify(loaded, log.classify_log.request)
    elif kind == "regress_log":
        inference.regress(loaded, log.regress_log.request)
    elif kind == "multi_inference_log":
        inference.multi_inference(lambda spec: loaded, log.multi_inference_log.request)
    elif kind is not None:
        raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind}")


def write_warmup_file(saved_model_dir, requests) -> Path:
    """Write PredictRequests as `assets.extra/tf_serving_warmup_requests` (TFRecord)."""
    import tensorflow as tf

    path = Path(saved_model_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path
