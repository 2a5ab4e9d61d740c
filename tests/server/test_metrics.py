"""Prometheus endpoint in TF Serving's format (docs/model_server.md, 'Metrics')."""

from __future__ import annotations

import re

import grpc
import pytest
from tensorflow_serving.apis import predict_pb2

PATH = "/monitoring/prometheus/metrics"


def page(rest) -> str:
    status, headers, raw = rest.request("GET", PATH)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return raw.decode()


def request_count(text: str, model: str, status: str) -> int:
    found = re.search(rf':tensorflow:serving:request_count\{{model_name="{model}",'
                      rf'status="{status}"\}} (\d+)', text)
    return int(found.group(1)) if found else 0


def test_prometheus_page(rest, predict_stub):
    # the server is shared with other test modules: compare counts before and after
    before = page(rest)
    rest.json("POST", "/v1/models/versioned:predict", {"instances": [1.0]})
    rest.json("POST", "/v1/models/nope:predict", {"instances": [1.0]})
    after_rest = page(rest)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError):
        predict_stub.Predict(request)
    text = page(rest)
    assert text.endswith("\n") and "# HELP" not in text and "_total" not in text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    nope = [request_count(t, "nope", "NOT_FOUND") for t in (before, after_rest, text)]
    assert nope == [nope[0], nope[0] + 1, nope[0] + 2]  # one REST, then one gRPC failure
    assert (request_count(text, "versioned", "OK")
            == request_count(before, "versioned", "OK") + 1)
    assert ':tensorflow:serving:request_latency_bucket{model_name="versioned",API="predict",' \
           'entrypoint="REST",le="+Inf"}' in text
    assert 'le="18"' in text and 'le="32.4"' in text  # 10 * 1.8^i, 6 significant digits
    assert re.search(r':tensorflow:cc:saved_model:load_attempt_count\{model_path="[^"]+/versioned'
                     r'/3",status="success"\} 1', text)
    assert ':tensorflow:serving:model_warmup_latency_count{model_path=' in text
    # TF core's load latency: a counter of microseconds, and a histogram per loader stage
    assert re.search(r':tensorflow:cc:saved_model:load_latency\{model_path="[^"]+/versioned/3"\}'
                     r' [1-9]', text)
    for stage in ("restore_graph", "init_graph"):
        assert re.search(r':tensorflow:cc:saved_model:load_latency_by_stage_count\{model_path='
                         rf'"[^"]+/versioned/3",stage="{stage}"\}} 1', text)


def test_prometheus_query_string_and_other_paths(rest):
    status, _h, _raw = rest.request("GET", PATH + "?x=1")
    assert status == 400
    status, headers, _raw = rest.request("GET", "/monitoring/other")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
