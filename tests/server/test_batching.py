"""Server-side batching driven by a BatchingParameters file (docs/model_server.md, 'Batching').

The batch timeout is long (1 s) so that requests released together always meet in one
batch: a batch runs when it is full or when its first request has waited that long.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.server.conftest import Http

MAX_BATCH = 8
ALLOWED_SIZES = (4, 8)


@pytest.fixture(scope="module")
def batching_server(server_models, tmp_path_factory, model_server_factory):
    root = tmp_path_factory.mktemp("batching")
    params = root / "batching.config"
    params.write_text(f"max_batch_size {{ value: {MAX_BATCH} }} "
                      "batch_timeout_micros { value: 1000000 } "
                      "max_enqueued_batches { value: 4 } num_batch_threads { value: 1 } "
                      + " ".join(f"allowed_batch_sizes: {s}" for s in ALLOWED_SIZES))
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


def concurrently(call, args) -> dict:
    """`call(arg)` for every arg, one thread each, released at the same moment;
    returns {arg: result, or the exception it raised}."""
    barrier = threading.Barrier(len(args))
    outcomes = {}

    def run(arg):
        barrier.wait()
        try:
            outcomes[arg] = call(arg)
        except Exception as exc:  # noqa: BLE001 - the caller checks every outcome
            outcomes[arg] = exc

    threads = [threading.Thread(target=run, args=(arg,)) for arg in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_requests_share_a_batch_padded_to_an_allowed_size(batching_server):
    _server, stub = batching_server
    rows_of = {1: 1, 2: 2, 3: 1, 4: 2}  # request id (the value of its cells) -> rows
    responses = concurrently(
        lambda rid: stub.Predict(probe_request(rows_of[rid], float(rid)), timeout=30), rows_of)
    batches = set()
    for rid, response in responses.items():
        assert not isinstance(response, Exception), f"request {rid}: {response}"
        out = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
        assert out["total"].tolist() == [2.0 * rid] * rows_of[rid]  # its own rows came back
        (ran_with,) = set(out["rows"].tolist())
        # padding repeats a member's row, so the ids seen in the run are exactly its members
        members = frozenset(int(v) for v in out["batch"][0])
        assert rid in members
        batches.add((members, ran_with))
    assert any(len(members) > 1 for members, _rows in batches), (
        f"every request ran alone: {batches}")
    for members, ran_with in batches:
        real_rows = sum(rows_of[rid] for rid in members)
        assert ran_with == min(s for s in ALLOWED_SIZES if s >= real_rows), (members, ran_with)


def test_batching_errors(batching_server):
    server, stub = batching_server
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(probe_request(MAX_BATCH + 1))
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


def test_variable_length_inputs_in_one_batch_fail_together(batching_server):
    """Two half batches fill one batch; their widths differ and padding is off."""
    _server, stub = batching_server
    half = MAX_BATCH // 2
    outcomes = concurrently(
        lambda cols: stub.Predict(probe_request(half, 1.0, cols), timeout=30), (2, 3))
    for cols, outcome in outcomes.items():
        assert isinstance(outcome, grpc.RpcError), f"{cols} columns succeeded: {outcome}"
        assert outcome.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "padding is turned off" in outcome.details()


def test_batch_major_heads_with_different_n_are_merged_and_padded(server_models,
                                                                   model_server_factory,
                                                                   tmp_path):
    """Contract v2: concurrent heads with different N share one run (padded to the largest
    N) and each request's first N scores equal an unbatched run's."""
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 1000000 } "
                      "max_enqueued_batches { value: 4 } num_batch_threads { value: 1 } "
                      "pad_variable_length_inputs: true")
    batched = model_server_factory({"batch_head": server_models["batch_head"]},
                                   ["--enable_batching", f"--batching_parameters_file={params}"])
    plain = model_server_factory({"batch_head": server_models["batch_head"]})

    def request(n):
        r = predict_pb2.PredictRequest()
        r.model_spec.name = "batch_head"
        r.inputs["state"].CopyFrom(tf.make_tensor_proto(np.full((1, 8), n / 10, np.float32)))
        ids = np.arange(n, dtype=np.int64)[None, :] + 7 * n
        r.inputs["cand_item_ids"].CopyFrom(tf.make_tensor_proto(ids))
        r.inputs["cand_cate_ids"].CopyFrom(tf.make_tensor_proto(ids + 1))
        return r

    def scores(server):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(server.grpc_target))
        return lambda n: tf.make_ndarray(stub.Predict(request(n), timeout=30).outputs["ctr"])

    sizes = (1, 3, 5, 2)
    merged = concurrently(scores(batched), sizes)
    alone = {n: scores(plain)(n) for n in sizes}
    for n in sizes:
        # one run padded to the largest N (as TF Serving returns it); the first N are its own
        assert merged[n].shape == (1, max(sizes))
        np.testing.assert_allclose(merged[n][:, :n], alone[n], rtol=1e-6)
