"""Prometheus endpoint in TF Serving's format (reference §6)."""

from __future__ import annotations

import re

import grpc
import pytest
from tensorflow_serving.apis import predict_pb2

PATH = "/monitoring/prometheus/metrics"


def test_prometheus_page(rest, predict_stub):
    rest.json("POST", "/v1/models/versioned:predict", {"instances": [1.0]})
    rest.json("POST", "/v1/models/nope:predict", {"instances": [1.0]})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError):
        predict_stub.Predict(request)
    status, headers, raw = rest.request("GET", PATH)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = raw.decode()
    assert text.endswith("\n") and "# HELP" not in text and "_total" not in text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    count = re.search(r':tensorflow:serving:request_count\{model_name="nope",'
                      r'status="NOT_FOUND"\} (\d+)', text)
    assert count and int(count.group(1)) >= 2  # one REST + one gRPC
    assert re.search(r':tensorflow:serving:request_count\{model_name="versioned",status="OK"\} '
                     r'[1-9]', text)
    assert ':tensorflow:serving:request_latency_bucket{model_name="versioned",API="predict",' \
           'entrypoint="REST",le="+Inf"}' in text
    assert 'le="18"' in text and 'le="32.4"' in text  # 10 * 1.8^i, 6 significant digits
    assert re.search(r':tensorflow:cc:saved_model:load_attempt_count\{model_path="[^"]+/versioned'
                     r'/3",status="success"\} 1', text)
    assert ':tensorflow:serving:model_warmup_latency_count{model_path=' in text


def test_prometheus_query_string_and_other_paths(rest):
    status, _h, _raw = rest.request("GET", PATH + "?x=1")
    assert status == 400
    status, headers, _raw = rest.request("GET", "/monitoring/other")
    assert status == 404 and headers["Content-Type"].startswith("text/html")
