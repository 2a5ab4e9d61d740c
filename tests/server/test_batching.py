"""Server-side batching driven by a BatchingParameters file (reference §5)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.server.conftest import Http


@pytest.fixture(scope="module")
def batching_server(server_models, tmp_path_factory, model_server_factory):
    root = tmp_path_factory.mktemp("batching")
    params = root / "batching.config"
    params.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 200000 } "
                      "max_enqueued_batches { value: 4 } num_batch_threads { value: 1 } "
                      "allowed_batch_sizes: 4 allowed_batch_sizes: 8")
    server = model_server_factory({"probe": server_models["probe"],
                                   "head": server_models["head"]},
                                  ["--enable_batching", f"--batching_parameters_file={params}"])
    channel = grpc.insecure_channel(server.grpc_target)
    yield server, prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def probe_request(rows: int, value: float = 1.0, cols: int = 2):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "probe"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.full((rows, cols), value, np.float32)))
    return request


def test_concurrent_requests_are_merged_padded_and_split(batching_server):
    _server, stub = batching_server
    results = {}

    def call(i):
        results[i] = stub.Predict(probe_request(1 + i % 2, float(i)), timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ran_with = set()
    for i, response in results.items():
        rows = 1 + i % 2
        total = tf.make_ndarray(response.outputs["total"])
        assert total.tolist() == [2.0 * i] * rows  # each request gets its own rows back
        ran_with.update(tf.make_ndarray(response.outputs["rows"]).tolist())
    # batches are padded to an allowed size, and at least two requests shared one batch
    assert ran_with <= {4, 8} and max(ran_with) >= 4


def test_batching_errors(batching_server):
    server, stub = batching_server
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(probe_request(9))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Task size 9 is larger than maximum input batch size 8"
    # the head signature mixes [1, S] and [N]: not batchable, as in TF Serving
    rest = Http(server.rest_url)
    status, body = rest.json("POST", "/v1/models/head:predict", {"inputs": {
        "state": [[0.0] * 8], "cand_item_ids": [1, 2], "cand_cate_ids": [1, 2]}})
    assert status == 400 and "equal 0th-dimension size" in body["error"]
    status, body = rest.json("POST", "/v1/models/probe:predict", {"inputs": [[1.0, 2.0]]})
    assert status == 200 and body["outputs"]["total"] == [3.0]
    rest.close()


def test_variable_length_inputs_without_padding_fail_together(batching_server):
    _server, stub = batching_server
    errors, oks = [], []

    def call(cols):
        try:
            stub.Predict(probe_request(1, 1.0, cols), timeout=30)
            oks.append(cols)
        except grpc.RpcError as exc:
            errors.append((exc.code(), exc.details()))

    threads = [threading.Thread(target=call, args=(c,)) for c in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # merged into one batch -> FAILED_PRECONDITION for both; split -> both fine
    if errors:
        assert all(code == grpc.StatusCode.FAILED_PRECONDITION and "padding is turned off" in msg
                   for code, msg in errors)
    else:
        assert sorted(oks) == [2, 3]
