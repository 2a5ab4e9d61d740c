"""The attacks of the "hostile input" issue against a server with the default limits: each
is refused or answered correctly, the server stays up, answers a valid request afterwards,
and its peak memory grows by less than 200 MiB (docs/model_server.md, 'Security')."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import zlib

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_server.config import build_models_config
from tests.server.memory import MIB, PeakRss
from tests.server.savedmodels import STATE_SIZE

MAX_GROWTH = 200 * MIB
INT64 = tf.int64.as_datatype_enum


@pytest.fixture(scope="module")
def server(server_models, model_server_factory):
    """Only the defaults, except a low connection cap so eviction is exercised."""
    return model_server_factory({"head": server_models["head"], "probe": server_models["probe"]},
                                ["--rest_api_max_connections=64"])


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_target, options=[
        ("grpc.max_send_message_length", -1)])
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def head_request(candidates=3) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "head"
    request.inputs["state"].CopyFrom(tf.make_tensor_proto(
        np.ones((1, STATE_SIZE), np.float32)))
    ids = np.arange(candidates, dtype=np.int64)
    request.inputs["cand_item_ids"].CopyFrom(tf.make_tensor_proto(ids))
    request.inputs["cand_cate_ids"].CopyFrom(tf.make_tensor_proto(ids))
    return request


def assert_alive(server, stubs):
    """The server process runs and answers a valid request on both APIs."""
    assert server.process.running
    ctr = stubs[0].Predict(head_request(), timeout=30).outputs["ctr"]
    assert [d.size for d in ctr.tensor_shape.dim] == [3]
    body = json.dumps({"inputs": {"state": [[1.0] * STATE_SIZE], "cand_item_ids": [1, 2],
                                  "cand_cate_ids": [3, 4]}})
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    conn.request("POST", "/v1/models/head:predict", body)
    response = conn.getresponse()
    assert response.status == 200 and len(json.loads(response.read())["outputs"]) == 2
    conn.close()


def test_declared_shape_of_2_pow_30_is_refused_before_allocation(server, stubs):
    request = head_request()
    ids = request.inputs["cand_item_ids"]
    ids.Clear()
    ids.dtype = INT64
    ids.tensor_shape.dim.add().size = 2**30
    ids.int64_val.append(7)  # Tensor::FromProto would repeat it 2^30 times: 8 GiB
    assert request.ByteSize() < 200
    with PeakRss(server.process.pid) as peak, pytest.raises(grpc.RpcError) as info:
        stubs[0].Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(
        f"input 'cand_item_ids' has {2**30} entries in dimension 0")
    assert "--max_request_candidates" in info.value.details()
    assert peak.growth < MAX_GROWTH
    assert_alive(server, stubs)


def test_tensor_bytes_over_the_request_limit_are_refused(server, stubs):
    """10,000 x 10,000 floats stays under the candidate bound but needs 400 MB."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "probe"
    x = request.inputs["x"]
    x.dtype = tf.float32.as_datatype_enum
    x.tensor_shape.dim.add().size = 10_000
    x.tensor_shape.dim.add().size = 10_000
    with PeakRss(server.process.pid) as peak, pytest.raises(grpc.RpcError) as info:
        stubs[0].Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("input 'x' of shape [10000, 10000] needs "
                                           "400000000 bytes")
    assert "--max_request_tensor_bytes" in info.value.details()
    assert peak.growth < MAX_GROWTH


def test_grpc_messages_over_the_receive_limit_are_refused(server, stubs):
    request = head_request()
    request.inputs["state"].tensor_content = b"\0" * (65 * MIB)
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].Predict(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_alive(server, stubs)


def gzip_bomb(size: int, chunk: int = 16 * MIB) -> bytes:
    """One valid gzip member inflating to `size` spaces, built from one compressed chunk
    repeated (a full flush makes every chunk's deflate bytes the same)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(b" " * chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    spaces, crc = b" " * chunk, 0
    for _ in range(size // chunk):
        crc = zlib.crc32(spaces, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * (size // chunk)
            + deflate.flush(zlib.Z_FINISH) + struct.pack("<II", crc, size & 0xFFFFFFFF))


def test_gzip_bomb_stops_at_the_body_limit(server, stubs):
    """~4 MB of gzip that inflates to 4 GiB of spaces: 413, inflated only to the limit."""
    bomb = gzip_bomb(4 * 1024 * MIB)
    assert len(bomb) < 5 * MIB
    with PeakRss(server.process.pid) as peak:
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        conn.request("POST", "/v1/models/head:predict", bomb,
                     headers={"Content-Encoding": "gzip"})
        response = conn.getresponse()
        body = json.loads(response.read())
        conn.close()
    assert response.status == 413
    assert body["error"] == (f"Request body inflates to more than {64 * MIB} bytes "
                             f"(--rest_api_max_body_bytes)")
    assert peak.growth < MAX_GROWTH
    assert_alive(server, stubs)


def test_corrupt_gzip_is_a_400(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    conn.request("POST", "/v1/models/head:predict", zlib.compress(b"{}"),
                 headers={"Content-Encoding": "gzip"})
    response = conn.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error"].startswith(
        "Failed to decompress gzip request body")


def test_hundreds_of_half_open_connections_cost_no_threads(server, stubs):
    """300 clients that never finish their headers (cap 64): no thread per socket, and a
    real client is still served (it evicts the oldest waiting socket)."""
    process = psutil.Process(server.process.pid)
    threads_before = process.num_threads()
    sockets = []
    try:
        with PeakRss(server.process.pid) as peak:
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
                s.sendall(b"POST /v1/models/head:predict HTTP/1.1\r\nContent-Le")
                sockets.append(s)
            assert_alive(server, stubs)
        assert process.num_threads() - threads_before < 10
        assert peak.growth < MAX_GROWTH
        # the oldest half-open sockets were closed to make room
        sockets[0].settimeout(10)
        try:
            closed = sockets[0].recv(100) == b""
        except ConnectionResetError:  # closed with our unread bytes queued: the kernel sends RST
            closed = True
        assert closed
    finally:
        for s in sockets:
            s.close()


def test_model_config_reload_is_off_by_default(server, stubs):
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.CopyFrom(build_models_config({"etc": "/etc"}))
    with pytest.raises(grpc.RpcError) as info:
        stubs[1].HandleReloadConfigRequest(reload, timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--enable_model_config_reload" in info.value.details()
    assert_alive(server, stubs)
