"""Tiny SavedModels the server tests serve: Keras, multi-signature tf.Module, multi-output,
several versions, a head-shaped model (state [1, S] + N candidates), a batch-major head
(contract v2; also compiled with XLA), a batching probe and a slow model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from model_server.tensors import make_proto
from model_server.warmup import write_warmup_file

STATE_SIZE = 8


def keras_model(path: Path) -> Path:
    import keras

    inputs = keras.Input(shape=(3,), name="x", dtype="float32")
    outputs = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros",
                                 name="score")(inputs)
    model = keras.Model(inputs, outputs)
    model.export(str(path), format="tf_saved_model", verbose=False)
    return path


class MultiSignature(tf.Module):
    """Several signatures with float, string and int inputs, plus classify/regress ones."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable([2.0, 3.0])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def dot(self, x):
        return {"y": tf.reduce_sum(x * self.w, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
    def strings(self, s):
        return {"length": tf.strings.length(s, unit="BYTE"),
                "upper_bytes": tf.strings.upper(s)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="a"),
                                  tf.TensorSpec([None], tf.int32, name="b"),
                                  tf.TensorSpec([None], tf.bool, name="flag")])
    def ints(self, a, b, flag):
        total = a + tf.cast(b, tf.int64)
        return {"sum": tf.where(flag, total, -total)}

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="s")])
    def scalar(self, s):
        """Scalar string in, scalar string and int out (rank-0 tensors on both APIs)."""
        return {"text": s, "length": tf.strings.length(s, unit="BYTE")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def not_regression(self, x):
        """One input and one output, but not named 'inputs'/'outputs': Regress refuses it."""
        return {"y": x}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        parsed = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32)})
        return {"outputs": parsed["x"] * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        parsed = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32)})
        x = parsed["x"]
        n = tf.shape(x)[0]
        scores = tf.stack([x, 1.0 - x], axis=1)
        classes = tf.tile(tf.constant([["pos", "neg"]]), [n, 1])
        return {"scores": scores, "classes": classes}


def multi_signature_model(path: Path) -> Path:
    m = MultiSignature()
    tf.saved_model.save(m, str(path), signatures={
        "serving_default": m.dot, "strings": m.strings, "ints": m.ints, "scalar": m.scalar,
        "not_regression": m.not_regression, "regress": m.regress, "classify": m.classify})
    return path


class MultiOutput(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x):
        return {"total": tf.reduce_sum(x, axis=1), "doubled": x * 2.0,
                "count": tf.fill([tf.shape(x)[0]], tf.constant(2, tf.int64))}


def multi_output_model(path: Path) -> Path:
    m = MultiOutput()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


class Scaled(tf.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = tf.Variable(factor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * self.factor}


def scaled_model(path: Path, factor: float, warmup: bool = True) -> Path:
    """y = x * factor; one version of the multi-version model (factor = version)."""
    m = Scaled(factor)
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    if warmup:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "ignored"
        request.inputs["x"].CopyFrom(make_proto(np.array([1.0, 2.0], np.float32)))
        write_warmup_file(path, [request] * 3)
    return path


class Head(tf.Module):
    """Head-shaped: one user's state [1, S] against N candidates -> ctr [N]."""

    def __init__(self, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.items = tf.Variable(rng.normal(size=(1000, STATE_SIZE)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, STATE_SIZE], tf.float32, name="state"),
                                  tf.TensorSpec([None], tf.int64, name="cand_item_ids"),
                                  tf.TensorSpec([None], tf.int64, name="cand_cate_ids")])
    def serve(self, state, cand_item_ids, cand_cate_ids):
        emb = tf.gather(self.items, (cand_item_ids + cand_cate_ids) % 1000)
        return {"ctr": tf.sigmoid(tf.reduce_sum(emb * state, axis=1))}


def head_model(path: Path, seed: int = 0) -> Path:
    m = Head(seed)
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


def build_all(root: Path) -> dict[str, Path]:
    """Every test model under `root`; returns {model name: base path}."""
    bases = {
        "keras": root / "keras",
        "multi": root / "multi",
        "multiout": root / "multiout",
        "versioned": root / "versioned",
        "head": root / "head",
        "probe": root / "probe",
        "batch_head": root / "batch_head",
        "xla_head": root / "xla_head",
        "slow": root / "slow",
    }
    keras_model(bases["keras"] / "1")
    multi_signature_model(bases["multi"] / "1")
    multi_output_model(bases["multiout"] / "1")
    for version in (1, 2, 3):
        scaled_model(bases["versioned"] / str(version), float(version))
    (bases["versioned"] / "not_a_version").mkdir()
    head_model(bases["head"] / "1")
    batch_probe_model(bases["probe"] / "1")
    batch_head_model(bases["batch_head"] / "1")
    batch_head_model(bases["xla_head"] / "1", jit_compile=True)
    slow_model(bases["slow"] / "1")
    return bases


class BatchProbe(tf.Module):
    """Shows what server-side batching did: every row reports the number of rows the graph
    ran with (`rows`) and the first column of every row of that run (`batch`), so a request
    whose rows hold its own id sees which requests shared its batch."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def serve(self, x):
        n = tf.shape(x)[0]
        return {"rows": tf.fill([n], n), "total": tf.reduce_sum(x, axis=1),
                "batch": tf.tile(x[None, :, 0], [n, 1])}


def batch_probe_model(path: Path) -> Path:
    m = BatchProbe()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


class BatchHead(tf.Module):
    """Contract v2 head: states [B, S] against candidates [B, N] -> ctr [B, N]; each row's
    scores depend only on that row (so batching and its padding cannot change them)."""

    def __init__(self, seed: int = 0, jit_compile: bool = False):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.items = tf.Variable(rng.normal(size=(1000, STATE_SIZE)).astype(np.float32))
        self.serve = tf.function(self._serve, jit_compile=jit_compile, input_signature=[
            tf.TensorSpec([None, STATE_SIZE], tf.float32, name="state"),
            tf.TensorSpec([None, None], tf.int64, name="cand_item_ids"),
            tf.TensorSpec([None, None], tf.int64, name="cand_cate_ids")])

    def _serve(self, state, cand_item_ids, cand_cate_ids):
        emb = tf.gather(self.items, (cand_item_ids + cand_cate_ids) % 1000)  # [B, N, S]
        return {"ctr": tf.sigmoid(tf.reduce_sum(emb * state[:, None, :], axis=2))}


def batch_head_model(path: Path, jit_compile: bool = False) -> Path:
    m = BatchHead(jit_compile=jit_compile)
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path


class Slow(tf.Module):
    """Takes as long as the request says: sleeps max(delay_ms) in 10 ms steps of a dataset,
    which TF cancels between steps (what a deadline does to a real graph run)."""

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="delay_ms")])
    def serve(self, delay_ms):
        from tensorflow.python.data.experimental.ops.testing import sleep

        ticks = tf.cast(tf.reduce_max(delay_ms), tf.int64) // 10
        slept = tf.data.Dataset.range(ticks).apply(sleep(10_000)).reduce(
            tf.constant(0, tf.int64), lambda count, _: count + 1)
        return {"ticks": tf.fill([tf.shape(delay_ms)[0]], slept)}


def slow_model(path: Path) -> Path:
    m = Slow()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return path
