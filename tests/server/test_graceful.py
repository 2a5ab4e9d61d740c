"""Surviving faults (docs/model_server.md, 'Overload and shutdown'): failing loads that do not
block other models, readiness per model, a drain on SIGTERM, deadlines that cancel graph
runs, and bounded queues that shed overload. Every server here is a real process."""

from __future__ import annotations

import signal
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_server.config import build_models_config, write_models_config
from tests.server.conftest import Http
from tests.server.test_lifecycle import wait_for

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def slow_request(delay_ms: float) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["delay_ms"].CopyFrom(tf.make_tensor_proto(np.array([[delay_ms]], np.float32)))
    return request


def stubs(server):
    channel = grpc.insecure_channel(server.grpc_target)
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
            health_pb2_grpc.HealthStub(channel))


def version_states(model_stub, name):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        response = model_stub.GetModelStatus(request, timeout=5)
    except grpc.RpcError:
        return []
    return [(s.state, s.status.error_message) for s in response.model_version_status]


def health(health_stub, service):
    try:
        return health_stub.Check(health_pb2.HealthCheckRequest(service=service),
                                 timeout=5).status
    except grpc.RpcError as exc:
        return exc.code()


def test_failing_load_blocks_no_other_model_nor_reload(server_models, tmp_path,
                                                       model_server_factory):
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    config = write_models_config(tmp_path / "models.config", {"head": server_models["head"]})
    server = model_server_factory(config, [
        "--model_config_file_poll_wait_seconds=1", "--enable_model_config_reload",
        f"--model_base_path_prefix={tmp_path.parent.parent}",
        # retries that outlast the test: the old manager held its lock through all of them
        "--max_num_load_retries=1000", "--load_retry_interval_micros=200000"])
    predict, model, _health = stubs(server)
    write_models_config(config, {"head": server_models["head"], "broken": broken})
    wait_for(lambda: any("not a SavedModel" in m or "parse" in m
                         for _s, m in version_states(model, "broken")), what="a failed load")
    # a new model through the config file loads while the broken one keeps retrying
    write_models_config(config, {"head": server_models["head"], "broken": broken,
                                 "probe": server_models["probe"]})
    wait_for(lambda: any(s == AVAILABLE for s, _m in version_states(model, "probe")),
             timeout=30, what="probe AVAILABLE beside a failing load")
    # and a gRPC reload adding another one returns once that one serves
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.CopyFrom(build_models_config({
        "head": server_models["head"], "broken": broken, "probe": server_models["probe"],
        "multiout": server_models["multiout"]}))
    assert model.HandleReloadConfigRequest(reload, timeout=30).status.error_code == 0
    assert any(s == AVAILABLE for s, _m in version_states(model, "multiout"))
    assert all(s != AVAILABLE for s, _m in version_states(model, "broken"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "multiout"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 2), np.float32)))
    assert predict.Predict(request, timeout=10).outputs["total"].float_val == [2.0]
    assert server.stop() == 0  # the retries stop with the server


def test_sigterm_drains_in_flight_requests(server_models, tmp_path, model_server_factory):
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    server = model_server_factory({"slow": server_models["slow"], "head": server_models["head"]},
                                  ["--enable_grpc_healthcheck_service",
                                   f"--monitoring_config_file={monitoring}",
                                   "--shutdown_grace_period_in_ms=60000"])
    predict, _model, health_stub = stubs(server)
    assert health(health_stub, "slow") == SERVING
    assert health(health_stub, "head") == SERVING
    assert health(health_stub, "") == SERVING
    assert health(health_stub, "no_such_model") == grpc.StatusCode.NOT_FOUND
    rest = Http(server.rest_url)
    assert rest.json("GET", "/v1/models/slow")[0] == 200

    outcomes = []
    started = threading.Event()

    def slow_call():
        future = predict.Predict.future(slow_request(1500), timeout=60)
        started.set()
        outcomes.append(future.result())

    threads = [threading.Thread(target=slow_call) for _ in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    wait_for(lambda: _running(rest) >= 2, what="two slow requests running")
    server.process.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: health(health_stub, "slow") == NOT_SERVING, what="NOT_SERVING")
    assert health(health_stub, "") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as refused:
        predict.Predict(slow_request(0), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rest.json("GET", "/v1/models/slow")[0] == 503
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 2 and all(list(o.outputs["ticks"].int64_val) == [150]
                                      for o in outcomes)
    assert server.process.popen.wait(60) == 0
    rest.close()


def _running(rest) -> int:
    """Requests the server holds (its in-flight gauge on the Prometheus page)."""
    _status, _headers, body = rest.request("GET", "/monitoring/prometheus/metrics")
    for line in body.decode().splitlines():
        if line.startswith(":uic:model_server:requests_in_flight"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


@pytest.fixture(scope="module")
def one_slot(server_models, model_server_factory):
    """The slow model with one slot and a queue of one: at most two requests held."""
    server = model_server_factory({"slow": server_models["slow"]}, [
        "--max_concurrent_requests_per_model=1", "--max_queued_requests_per_model=1"])
    predict, _model, _health = stubs(server)
    yield server, predict


def test_deadline_cancels_the_graph_run_and_frees_its_slot(one_slot):
    server, predict = one_slot
    with pytest.raises(grpc.RpcError) as late:
        predict.Predict(slow_request(60_000), timeout=0.5)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # were the 60 s run still holding the only slot, these would queue and then be shed
    for _ in range(3):
        assert predict.Predict(slow_request(0), timeout=20).outputs["ticks"].int64_val == [0]


def test_overload_is_shed_not_queued(one_slot):
    server, predict = one_slot
    holders = [predict.Predict.future(slow_request(3000), timeout=60) for _ in range(2)]
    rest = Http(server.rest_url)
    wait_for(lambda: _shed(predict), what="a full slot and queue")
    with pytest.raises(grpc.RpcError) as shed:
        predict.Predict(slow_request(0), timeout=30)
    assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max_queued_requests_per_model" in shed.value.details()
    status, body = rest.json("POST", "/v1/models/slow:predict",
                             {"instances": [[0.0]]})
    assert status == 503 and "overloaded" in body["error"]
    assert all(list(h.result().outputs["ticks"].int64_val) == [300] for h in holders)
    rest.close()


def _shed(predict) -> bool:
    """True once a request is refused for overload (a 0 ms request that got in is fine)."""
    try:
        predict.Predict(slow_request(0), timeout=30)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return False
