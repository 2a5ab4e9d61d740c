"""Session fixtures for the model tests: a small drifting-interest data set, tiny models
trained on it through the training CLI (so BatchNorm/Dice moving statistics are real), and
their exports through the export CLI."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models.synth import write_drift_data
from uic.contract import MODELS


@pytest.fixture(scope="session")
def drift_data(tmp_path_factory):
    return write_drift_data(tmp_path_factory.mktemp("drift"), users=120, events_per_user=40, seed=3)


@pytest.fixture(scope="session")
def tiny_runs(drift_data, tmp_path_factory):
    from tf_models.train import main as train_main

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name in MODELS:
        out = root / name
        code = train_main([
            "--model", name, "--data", str(drift_data), "--out", str(out), "--size", "tiny",
            "--epochs", "1", "--batch_size", "32", "--max_len", "30", "--verbose", "0",
        ])
        assert code == 0
        runs[name] = out
    return runs


@pytest.fixture(scope="session")
def tiny_saved(tiny_runs, tmp_path_factory):
    from tf_models.export import main as export_main

    root = tmp_path_factory.mktemp("saved_models")
    for run in tiny_runs.values():
        assert export_main(["--run", str(run), "--out", str(root), "--version", "1"]) == 0
    return root


class KerasParts:
    """The four parts of an in-memory Keras model, compiled with tf.function."""

    def __init__(self, model):
        from tf_models.export import part_function

        self.model = model
        self.state_size = model.state_size
        self.fns = {p: part_function(model, p) for p in ("tower", "step", "head", "full")}

    def _call(self, part, *args):
        return next(iter(self.fns[part](*args).values())).numpy()

    def initial(self, batch):
        return self.model.pack(self.model.initial_components(batch)).numpy()

    def tower(self, items, cates, lens):
        return self._call("tower", items, cates, lens)

    def step(self, state, items, cates, n):
        return self._call("step", state, items, cates, n)

    def head(self, state, ci, cc):
        return self._call("head", state, ci, cc)

    def full(self, items, cates, lens, ci, cc):
        return self._call("full", items, cates, lens, ci, cc)


class SavedParts:
    """The same four parts through the exported SavedModels' serving_default signatures."""

    def __init__(self, root, name, version=1):
        import tensorflow as tf

        from uic.contract import ExportMetadata, export_dir

        self.sigs = {}
        for part in ("tower", "step", "head", "full"):
            path = export_dir(root, name, part, version)
            self.sigs[part] = tf.saved_model.load(str(path)).signatures["serving_default"]
        self.state_size = ExportMetadata.read(export_dir(root, name, "head", version)).state_size
        self._tf = tf

    def _call(self, part, **kw):
        tf = self._tf
        args = {}
        for k, v in kw.items():
            dtype = tf.float32 if k == "state" else tf.int32 if k in ("hist_len", "num_events") else tf.int64
            args[k] = tf.constant(v, dtype)
        return next(iter(self.sigs[part](**args).values())).numpy()

    def initial(self, batch):
        empty = np.zeros((batch, 0), np.int64)
        return self.tower(empty, empty, np.zeros(batch, np.int32))

    def tower(self, items, cates, lens):
        return self._call("tower", hist_item_ids=items, hist_cate_ids=cates, hist_len=lens)

    def step(self, state, items, cates, n):
        return self._call("step", state=state, item_ids=items, cate_ids=cates, num_events=n)

    def head(self, state, ci, cc):
        return self._call("head", state=state, cand_item_ids=ci, cand_cate_ids=cc)

    def full(self, items, cates, lens, ci, cc):
        return self._call("full", hist_item_ids=items, hist_cate_ids=cates, hist_len=lens,
                          cand_item_ids=ci, cand_cate_ids=cc)


@pytest.fixture(scope="session")
def keras_parts(tiny_runs):
    from tf_models.run import load_run

    return {name: KerasParts(load_run(run)) for name, run in tiny_runs.items()}


@pytest.fixture(scope="session")
def saved_parts(tiny_saved):
    return {name: SavedParts(tiny_saved, name) for name in MODELS}
