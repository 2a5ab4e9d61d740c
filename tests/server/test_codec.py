"""Pure conversion logic: float formatting, TensorProto encoding, metrics text, protos."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from model_server import rest_json, tensors
from model_server.errors import ServingError
from model_server.metrics import ServerMetrics
from model_server.protos import BatchingParameters


@pytest.mark.parametrize(("value", "text"), [
    (3.0, "3.0"), (0.5, "0.5"), (9e6, "9e+06"), (3e-5, "3e-05"), (999999.0, "999999.0"),
    (555557.5, "555557.5"), (717887168.0, "717887168.0"), (0.1, "0.1"),
    (float("nan"), "NaN"), (float("inf"), "Infinity"), (-float("inf"), "-Infinity"),
    (-2.0, "-2.0"), (16777217.0, "16777216.0"), (1.1e-45, "1.4013e-45"),
])
def test_float32_write_decimal(value, text):
    assert rest_json.format_floats(np.array([value], np.float32)) == [text]


def test_float64_uses_17_digits():
    assert rest_json.format_floats(np.array([0.1 + 0.2])) == ["0.30000000000000004"]


def test_typed_fields_round_trip():
    for array in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2], np.int32),
                  np.array([2**50], np.int64), np.array([True, False]),
                  np.array([1.5], np.float16), np.array([7], np.uint8)):
        proto = tensors.make_proto(array)
        assert not proto.tensor_content
        np.testing.assert_array_equal(tensors.to_numpy(proto), array)
        np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    strings = np.array([b"a", b"\xff"], dtype=object)
    proto = tensors.make_proto(strings)
    assert list(proto.string_val) == [b"a", b"\xff"]
    assert tensors.to_numpy(proto).tolist() == [b"a", b"\xff"]


def test_tensor_content_and_fill_rules():
    proto = tf.make_tensor_proto(np.arange(4, dtype=np.float32))
    assert proto.tensor_content
    assert tensors.to_numpy(proto).tolist() == [0.0, 1.0, 2.0, 3.0]
    content = tensors.make_proto(np.ones(3, np.float32), as_content=True)
    assert content.tensor_content and not content.float_val
    zeros = tensors.make_proto(np.zeros(0, np.int64))
    zeros.tensor_shape.dim[0].size = 3
    assert tensors.to_numpy(zeros).tolist() == [0, 0, 0]
    too_many = tensors.make_proto(np.ones(3, np.float32))
    too_many.tensor_shape.dim[0].size = 2
    with pytest.raises(ServingError, match="3 values"):
        tensors.to_numpy(too_many)


def test_json_tensor_conversion():
    assert rest_json.to_array([[1, 2], [3, 4]], types_pb2.DT_FLOAT).dtype == np.float32
    assert rest_json.to_array(5, types_pb2.DT_INT64).shape == ()
    assert rest_json.to_array(1435774380, types_pb2.DT_FLOAT).item() == 1435774336.0
    with pytest.raises(ServingError, match="is not of expected type: int32"):
        rest_json.to_array([1.0], types_pb2.DT_INT32)
    with pytest.raises(ServingError, match="is not of expected type: int64"):
        rest_json.to_array([True], types_pb2.DT_INT64)
    with pytest.raises(ServingError) as info:
        rest_json.to_array([1.0], types_pb2.DT_BFLOAT16)
    assert info.value.code == "UNIMPLEMENTED" and info.value.http_status == 501


def test_response_text_shapes():
    outputs = {"y": np.array([[1.0, 2.0]], np.float32)}
    assert rest_json.response_text(outputs, True) == '{"predictions": [[1.0, 2.0]]}'
    assert rest_json.response_text({"s": np.array(3, np.int64)}, False) == '{"outputs": 3}'
    with pytest.raises(ServingError, match="no shape information"):
        rest_json.response_text({"s": np.array(3, np.int64)}, True)
    with pytest.raises(ServingError, match="inconsistent batch size"):
        rest_json.response_text({"a": np.zeros(2), "b": np.zeros(3)}, True)
    # non-UTF-8 bytes in a plain string output: sent as base64 rather than broken JSON
    text = rest_json.response_text({"s": np.array([b"\xff"], dtype=object)}, False)
    assert text == '{"outputs": [{"b64": "/w=="}]}'


def test_grpc_messages_are_truncated():
    error = ServingError("INVALID_ARGUMENT", "x" * 2000)
    assert error.grpc_details() == "x" * 1024 + "...TRUNCATED"
    assert error.http_status == 400


def test_metrics_text_format():
    metrics = ServerMetrics()
    metrics.request("m", "OK")
    metrics.latency("m", "Predict", "GRPC", 150.0)
    text = metrics.render().decode()
    assert '# TYPE :tensorflow:serving:request_count counter' in text
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in text
    assert ('request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="188.957"} 1'
            in text)
    assert metrics.counter_value(":tensorflow:serving:request_count") == 1


def test_batching_parameters_proto_field_numbers():
    fields = {f.name: f.number for f in BatchingParameters.DESCRIPTOR.fields}
    assert fields["max_batch_size"] == 1 and fields["batch_timeout_micros"] == 2
    assert fields["max_enqueued_batches"] == 3 and fields["num_batch_threads"] == 4
    assert fields["allowed_batch_sizes"] == 6 and fields["pad_variable_length_inputs"] == 7


def test_warmup_replay_and_corrupt_file(server_models, tmp_path):
    import shutil

    from model_server.servable import load_model
    from model_server.warmup import WARMUP_FILE, run_warmup

    version = tmp_path / "1"
    shutil.copytree(server_models["versioned"] / "1", version)
    loaded = load_model("v", 1, version)
    assert run_warmup(loaded, iterations=2) == 3
    (version / WARMUP_FILE).write_bytes(b"\x01\x02 not a tfrecord at all")
    with pytest.raises(ServingError) as info:
        run_warmup(loaded)
    assert info.value.code == "DATA_LOSS"
    assert "Please verify your warmup data is in TFRecord format" in info.value.message
