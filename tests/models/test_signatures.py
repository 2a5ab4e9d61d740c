"""Exported SavedModels match the contract (uic.contract): signature names, dtypes and
shapes; metadata; TF Serving warm-up records that the signatures accept; clear errors on
bad requests. Uses the tiny trained exports of tests/models/conftest.py (`tiny_saved`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from uic.contract import (
    CANDIDATE_SIZES,
    CONTRACT_VERSION,
    METADATA_FILE,
    MODELS,
    PARTS,
    SIGNATURE_NAME,
    SIGNATURES,
    WARMUP_FILE,
    ExportMetadata,
    IncompatibleExport,
    export_dir,
)


def _expected_shape(spec, state_size):
    return [state_size if d == "S" else d if isinstance(d, int) else None for d in spec.shape]


@pytest.fixture(scope="module")
def loaded(tiny_saved):
    return {
        (m, p, 1): tf.saved_model.load(str(export_dir(tiny_saved, m, p, 1)))
        for m in MODELS for p in PARTS
    }


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("part", PARTS)
def test_signature_matches_contract(tiny_saved, loaded, model, part):
    path = export_dir(tiny_saved, model, part, 1)
    meta = ExportMetadata.read(path)
    assert meta.model == model and meta.version == 1
    assert sum(size for _, size in meta.state_layout) == meta.state_size
    sig = loaded[(model, part, 1)].signatures[SIGNATURE_NAME]
    inputs, outputs = SIGNATURES[part]
    got_inputs = sig.structured_input_signature[1]
    assert sorted(got_inputs) == sorted(s.name for s in inputs)
    for spec in inputs:
        assert got_inputs[spec.name].dtype.name == spec.dtype
        assert got_inputs[spec.name].shape.as_list() == _expected_shape(spec, meta.state_size)
    got_outputs = sig.structured_outputs
    assert sorted(got_outputs) == sorted(s.name for s in outputs)
    for spec in outputs:
        assert got_outputs[spec.name].dtype.name == spec.dtype
        assert got_outputs[spec.name].shape.as_list() == _expected_shape(spec, meta.state_size)


@pytest.mark.parametrize("model", MODELS)
def test_metadata_is_identical_across_parts(tiny_saved, model):
    metas = {p: ExportMetadata.read(export_dir(tiny_saved, model, p, 1)) for p in PARTS}
    assert len({m.to_json() for m in metas.values()}) == 1
    meta = metas["head"]
    assert (meta.ring_size is not None) == (model == "dien")
    assert (meta.memory_slots is not None) == (model == "mimn")
    assert meta.contract_version == CONTRACT_VERSION == 2
    assert meta.xla is True  # the CLI's default


def test_metadata_of_another_contract_version_is_refused(tiny_saved, tmp_path):
    """A version-1 export (no contract_version in its metadata) is refused with what to do."""
    record = json.loads((export_dir(tiny_saved, "mlp", "head", 1) / METADATA_FILE).read_text())
    old = tmp_path / "mlp_head" / "1"
    for version in (None, 1, 3):
        if version is None:
            record.pop("contract_version", None)
        else:
            record["contract_version"] = version
        (old / METADATA_FILE).parent.mkdir(parents=True, exist_ok=True)
        (old / METADATA_FILE).write_text(json.dumps(record))
        with pytest.raises(IncompatibleExport, match=r"version \d.*re-export with this version: make export"):
            ExportMetadata.read(old)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("part", PARTS)
def test_warmup_records_are_valid_requests(tiny_saved, loaded, model, part):
    path = export_dir(tiny_saved, model, part, 1)
    records = list(tf.data.TFRecordDataset(str(path / WARMUP_FILE)).as_numpy_iterator())
    assert records
    sig = loaded[(model, part, 1)].signatures[SIGNATURE_NAME]
    shapes = []
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        request = log.predict_log.request
        assert request.model_spec.name == f"{model}_{part}"
        assert request.model_spec.signature_name == SIGNATURE_NAME
        args = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = sig(**args)
        assert set(out) == {s.name for s in SIGNATURES[part][1]}
        shapes.append(tuple(args[SIGNATURES[part][0][-1].name].shape))
    if part in ("head", "full"):  # one user with every padded candidate count, and a batch
        assert set(shapes) >= {(1, n) for n in CANDIDATE_SIZES}
        assert any(rows > 1 for rows, _ in shapes)


def test_export_model_versions_and_seeds(tmp_path):
    """export_model writes numbered versions; different seeds give different models."""
    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    paths = {v: export_model("mlp", tmp_path, v, config=ModelConfig.tiny(), seed=v, parts=("head",))
             for v in (1, 2)}
    assert paths[2]["head"] == export_dir(tmp_path, "mlp", "head", 2)
    sigs = {v: tf.saved_model.load(str(p["head"])).signatures[SIGNATURE_NAME] for v, p in paths.items()}
    size = ExportMetadata.read(paths[1]["head"]).state_size
    state = tf.constant(np.random.default_rng(0).normal(size=(1, size)), tf.float32)
    ids = tf.constant([[1, 2, 3]], tf.int64)
    v1 = sigs[1](state=state, cand_item_ids=ids, cand_cate_ids=ids)["ctr"].numpy()
    v2 = sigs[2](state=state, cand_item_ids=ids, cand_cate_ids=ids)["ctr"].numpy()
    assert not np.allclose(v1, v2)
    with pytest.raises(FileExistsError, match="pick a new --version"):
        export_model("mlp", tmp_path, 1, config=ModelConfig.tiny(), parts=("head",))


def test_bad_requests_get_clear_errors(loaded):
    head = loaded[("mimn", "head", 1)].signatures[SIGNATURE_NAME]
    size = head.structured_input_signature[1]["state"].shape[1]
    state = tf.zeros([1, size])
    with pytest.raises(tf.errors.InvalidArgumentError, match="cand_item_ids and cand_cate_ids"):
        head(state=state, cand_item_ids=tf.constant([[1, 2]], tf.int64), cand_cate_ids=tf.constant([[1]], tf.int64))
    two = tf.ones([2, 3], tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="state and cand_item_ids must have the same number of rows"):
        head(state=state, cand_item_ids=two, cand_cate_ids=two)
    tower = loaded[("dien", "tower", 1)].signatures[SIGNATURE_NAME]
    ids = tf.ones([2, 3], tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_len must be <="):
        tower(hist_item_ids=ids, hist_cate_ids=ids, hist_len=tf.constant([3, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_len must be >= 0"):
        tower(hist_item_ids=ids, hist_cate_ids=ids, hist_len=tf.constant([3, -1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one entry per row"):
        tower(hist_item_ids=ids, hist_cate_ids=ids, hist_len=tf.constant([3]))
    step = loaded[("dien", "step", 1)].signatures[SIGNATURE_NAME]
    dsize = step.structured_input_signature[1]["state"].shape[1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="same number of rows"):
        step(state=tf.zeros([3, dsize]), item_ids=ids, cate_ids=ids, num_events=tf.constant([1, 1]))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        step(state=tf.zeros([2, dsize + 1]), item_ids=ids, cate_ids=ids, num_events=tf.constant([1, 1]))


def test_portable_export_has_no_xla(tiny_runs, tmp_path):
    """`--xla off` writes head and full without any XLA-compiled function and records it in
    the metadata; the scores equal the XLA export's."""
    from tf_models.export import main as export_main

    for xla, version in (("off", 1), ("on", 2)):
        assert export_main(["--run", str(tiny_runs["mlp"]), "--out", str(tmp_path), "--version",
                            str(version), "--parts", "head,full", "--xla", xla]) == 0
    for part in ("head", "full"):
        off, on = (export_dir(tmp_path, "mlp", part, v) for v in (1, 2))
        assert ExportMetadata.read(off).xla is False and ExportMetadata.read(on).xla is True
        assert _compiled_functions(off) == 0 < _compiled_functions(on)
    sigs = [tf.saved_model.load(str(export_dir(tmp_path, "mlp", "head", v))).signatures[SIGNATURE_NAME]
            for v in (1, 2)]
    state = tf.constant(np.random.default_rng(1).normal(size=(2, ExportMetadata.read(off).state_size)),
                        tf.float32)
    ids = tf.constant(np.arange(1, 21).reshape(2, 10), tf.int64)
    off_ctr, on_ctr = (sig(state=state, cand_item_ids=ids, cand_cate_ids=ids)["ctr"].numpy() for sig in sigs)
    assert np.abs(off_ctr - on_ctr).max() <= 1e-5


def _compiled_functions(path) -> int:
    """Functions of a SavedModel marked for XLA compilation (`jit_compile=True`)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    return sum(1 for fn in library.function
               if fn.attr["_XlaMustCompile"].b)
