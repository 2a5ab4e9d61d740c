"""Property-based fuzzing of every server entry point (hypothesis): REST bodies (JSON of any
shape and size, several encodings, gzip) and gRPC TensorProtos (any dtype, shape, content,
mismatched tensor_content). Each case must get a clear error or a correct answer within its
deadline; afterwards the server still answers a valid request and its peak memory grew by
less than 200 MiB.

The normal run tries a few dozen cases per entry point; `UIC_FUZZ_EXAMPLES=2000` (what
`make fuzz` sets) runs the long profile. The number of cases tried is printed (-s shows it).
"""

from __future__ import annotations

import gzip
import http.client
import json
import os

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from tests.server.memory import MIB, PeakRss

EXAMPLES = int(os.environ.get("UIC_FUZZ_EXAMPLES", "40"))
DEADLINE_S = 10  # per case: a hang fails the case
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
REST_STATUSES = {200, 400, 404, 413, 501}
GRPC_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}
# (model, signature, {input: dtype}) of the shared test server's models
TARGETS = [
    ("versioned", "", {"x": types_pb2.DT_FLOAT}),
    ("keras", "", {"x": types_pb2.DT_FLOAT}),
    ("head", "", {"state": types_pb2.DT_FLOAT, "cand_item_ids": types_pb2.DT_INT64,
                  "cand_cate_ids": types_pb2.DT_INT64}),
    ("multi", "strings", {"s": types_pb2.DT_STRING}),
    ("multi", "ints", {"a": types_pb2.DT_INT64, "b": types_pb2.DT_INT32,
                       "flag": types_pb2.DT_BOOL}),
    ("multi", "scalar", {"s": types_pb2.DT_STRING}),
    ("multi", "regress", {"inputs": types_pb2.DT_STRING}),
    ("nope", "", {"x": types_pb2.DT_FLOAT}),
]


@pytest.fixture(scope="module")
def peak(main_server):
    """Peak RSS of the shared server over this module; checked by the last test."""
    with PeakRss(main_server.process.pid) as measured:
        yield measured


@pytest.fixture(scope="module")
def counts():
    tried: dict[str, int] = {}
    yield tried
    print("\nfuzz cases tried per entry point: "
          + ", ".join(f"{name} {n}" for name, n in sorted(tried.items())))


# ------------------------------------------------------------------------------- REST
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                         st.fixed_dictionaries({"b64": st.text("AB+/=", max_size=8)}))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=30)
wide = st.builds(lambda item, n: [item] * n, json_scalars, st.integers(0, 30_000))


@st.composite
def rest_requests(draw):
    model, signature, inputs = draw(st.sampled_from(TARGETS))
    api = draw(st.sampled_from(["predict", "predict", "classify", "regress"]))
    key = draw(st.sampled_from(["instances", "inputs", "examples", "other"]))
    value = draw(st.one_of(json_values, wide, st.fixed_dictionaries(
        {name: st.one_of(json_values, wide) for name in inputs})))
    body = {key: value}
    if signature or draw(st.booleans()):
        body["signature_name"] = draw(st.one_of(st.just(signature), json_scalars))
    raw = json.dumps(body).encode()
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "bytes", "truncated", "gzip",
                                     "bad-gzip"]))
    if encoding == "utf-16":
        raw = json.dumps(body).encode("utf-16")
    elif encoding == "bytes":
        raw = draw(st.binary(max_size=200))
    elif encoding == "truncated":
        raw = raw[:draw(st.integers(0, max(len(raw) - 1, 0)))]
    headers = {}
    if encoding in ("gzip", "bad-gzip"):
        raw = gzip.compress(raw)
        if encoding == "bad-gzip":
            raw = raw[:draw(st.integers(0, len(raw) - 1))]
        headers["Content-Encoding"] = "gzip"
    return f"/v1/models/{model}:{api}", raw, headers


def rest_call(server, path, raw, headers):
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=DEADLINE_S)
    try:
        conn.request("POST", path, raw, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_rest_bodies(main_server, peak, counts):
    @FUZZ
    @given(rest_requests())
    def case(request):
        counts["REST POST"] = counts.get("REST POST", 0) + 1
        status, data = rest_call(main_server, *request)
        assert status in REST_STATUSES, (status, data[:300])
        body = json.loads(data)  # NaN/Infinity tokens are allowed, as in TF Serving
        assert ("error" in body) == (status != 200)
        if status == 200:
            assert set(body) & {"predictions", "outputs", "results"}

    case()


@st.composite
def float_rows(draw):
    # subnormals excluded: TF's CPU kernels flush them to zero (TF Serving does the same)
    return draw(st.lists(st.floats(-1e6, 1e6, width=32, allow_subnormal=False), min_size=1,
                         max_size=50))


def test_rest_answers_are_correct(main_server, counts):
    @FUZZ
    @given(float_rows(), st.booleans())
    def case(values, gzipped):
        counts["REST predict (oracle)"] = counts.get("REST predict (oracle)", 0) + 1
        raw = json.dumps({"instances": values}).encode()
        headers = {"Content-Encoding": "gzip"} if gzipped else {}
        status, data = rest_call(main_server, "/v1/models/versioned:predict",
                                 gzip.compress(raw) if gzipped else raw, headers)
        assert status == 200
        expected = (np.array(values, np.float32) * np.float32(3)).tolist()
        assert np.array(json.loads(data)["predictions"], np.float32).tolist() == expected

    case()


# ------------------------------------------------------------------------------- gRPC
TYPED_FIELDS = {"float_val": st.floats(width=32), "double_val": st.floats(),
                "int_val": st.integers(-2**31, 2**31 - 1),
                "int64_val": st.integers(-2**63, 2**63 - 1), "bool_val": st.booleans(),
                "string_val": st.binary(max_size=10), "half_val": st.integers(0, 2**31 - 1),
                "uint32_val": st.integers(0, 2**32 - 1), "uint64_val": st.integers(0, 2**64 - 1)}
dims = st.one_of(st.integers(0, 4), st.sampled_from([2**30, 2**62, 10_001, 2_000_001]))


@st.composite
def tensor_protos(draw, expected_dtype):
    proto = tensor_pb2.TensorProto()
    proto.dtype = draw(st.one_of(st.just(expected_dtype), st.just(expected_dtype),
                                 st.sampled_from(types_pb2.DataType.values())))
    if draw(st.integers(0, 9)) == 0:
        proto.tensor_shape.unknown_rank = True
    for size in draw(st.lists(dims, max_size=4)):
        proto.tensor_shape.dim.add().size = size
    if draw(st.booleans()):
        proto.tensor_content = draw(st.binary(max_size=64))
    else:
        field = draw(st.sampled_from(sorted(TYPED_FIELDS)))
        getattr(proto, field).extend(draw(st.lists(TYPED_FIELDS[field], max_size=8)))
    return proto


@st.composite
def predict_requests(draw):
    model, signature, inputs = draw(st.sampled_from(TARGETS))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    names = list(inputs) + draw(st.lists(st.sampled_from(["extra", "x"]), max_size=1))
    for name in names:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing input
        request.inputs[name].CopyFrom(draw(tensor_protos(inputs.get(name, types_pb2.DT_FLOAT))))
    return request


def test_grpc_tensor_protos(main_server, predict_stub, peak, counts):
    @FUZZ
    @given(predict_requests())
    def case(request):
        counts["gRPC Predict"] = counts.get("gRPC Predict", 0) + 1
        try:
            predict_stub.Predict(request, timeout=DEADLINE_S)
        except grpc.RpcError as exc:
            assert exc.code() in GRPC_CODES, (exc.code(), exc.details())
            assert exc.details()

    case()


def test_server_survived_the_fuzzing(main_server, predict_stub, peak):
    """Last in this module: alive, correct on a valid request, peak memory bounded."""
    assert main_server.process.running
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "versioned"
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].float_val.extend([1.0, 2.0])
    assert list(predict_stub.Predict(request, timeout=DEADLINE_S).outputs["y"].float_val) == [
        3.0, 6.0]
    peak.stop()
    assert peak.growth < 200 * MIB
