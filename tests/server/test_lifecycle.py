"""Versions appearing on disk, hot swaps under load, failed loads, config reloads
(docs/model_server.md, 'Models and versions')."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_server.config import build_models_config, write_models_config
from tests.server.conftest import Http

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def publish(src, base, version):
    """Copy a version in atomically (write elsewhere, then rename), as exporters should."""
    tmp = base.parent / f".tmp_{base.name}_{version}"
    shutil.copytree(src, tmp)
    tmp.rename(base / str(version))


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def lifecycle(server_models, tmp_path_factory, model_server_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    hot = root / "hot"
    hot.mkdir()
    publish(server_models["versioned"] / "1", hot, 1)
    config = write_models_config(root / "models.config", {"hot": hot})
    server = model_server_factory(config, [
        "--file_system_poll_wait_seconds=1", "--model_config_file_poll_wait_seconds=1",
        "--enable_model_config_reload",
        f"--model_base_path_prefix={tmp_path_factory.getbasetemp()}"])
    channel = grpc.insecure_channel(server.grpc_target)
    yield {"server": server, "root": root, "hot": hot, "config": config,
           "source": server_models["versioned"], "models": server_models,
           "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "model": model_service_pb2_grpc.ModelServiceStub(channel)}
    channel.close()


def request(name="hot"):
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    return req


def versions(stub, name="hot"):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    return {s.version: s for s in stub.GetModelStatus(req).model_version_status}


def serving_version(lifecycle, name="hot") -> int:
    """The version a request for the latest `name` gets now."""
    return lifecycle["predict"].Predict(request(name)).model_spec.version.value


def reload_request(models) -> model_management_pb2.ReloadConfigRequest:
    reload = model_management_pb2.ReloadConfigRequest()
    reload.config.CopyFrom(build_models_config(models))
    return reload


def test_hot_swap_under_load_has_zero_failures(lifecycle):
    stub = lifecycle["predict"]
    rest = Http(lifecycle["server"].rest_url)
    stop = threading.Event()
    seen, failures, count = set(), [], [0]

    def loop(use_rest):
        while not stop.is_set():
            try:
                if use_rest:
                    status, body = rest.json("POST", "/v1/models/hot:predict", {"instances": [1.0]})
                    if status != 200:
                        failures.append((status, body))
                    else:
                        seen.add(int(body["predictions"][0]))
                else:
                    response = stub.Predict(request(), timeout=10)
                    seen.add(response.model_spec.version.value)
                count[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                failures.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(use_rest,)) for use_rest in (False, True)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: count[0] > 20, what="traffic")
        publish(lifecycle["source"] / "2", lifecycle["hot"], 2)
        wait_for(lambda: 2 in seen, what="version 2 to serve")
        publish(lifecycle["source"] / "3", lifecycle["hot"], 3)
        wait_for(lambda: 3 in seen, what="version 3 to serve")
        settled = count[0]
        wait_for(lambda: count[0] > settled + 20, what="traffic after the swap")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        rest.close()
    assert failures == []
    assert seen == {1, 2, 3}
    status = versions(lifecycle["model"])
    assert status[3].state == AVAILABLE
    assert status[1].state == END and status[2].state == END


def test_failed_version_keeps_previous_serving(lifecycle):
    before = serving_version(lifecycle)
    broken = lifecycle["hot"] / "7"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    wait_for(lambda: 7 in versions(lifecycle["model"]) and
             versions(lifecycle["model"])[7].state == END, what="failed load of v7")
    status = versions(lifecycle["model"])
    assert status[7].status.error_message and status[7].status.error_code != 0
    assert status[before].state == AVAILABLE
    assert serving_version(lifecycle) == before
    shutil.rmtree(broken)


def test_reload_config_request(lifecycle):
    stub = lifecycle["model"]
    before = serving_version(lifecycle)
    models = {"hot": lifecycle["hot"],
              "second": {"base_path": lifecycle["models"]["multiout"]}}
    reload = reload_request(models)
    response = stub.HandleReloadConfigRequest(reload)
    assert response.status.error_code == 0
    assert versions(stub, "second")[1].state == AVAILABLE

    duplicate = reload_request(models)
    duplicate.config.model_config_list.config.add().CopyFrom(
        duplicate.config.model_config_list.config[0])
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(duplicate)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Illegal to list model hot multiple times in config list"

    custom = model_management_pb2.ReloadConfigRequest()
    custom.config.custom_model_config.Pack(reload.config)
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(custom)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("ServerModelConfig type not supported")

    bad_label = reload_request({**models, "second": {
        "base_path": lifecycle["models"]["multiout"], "labels": {"stable": 4}}})
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleReloadConfigRequest(bad_label)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == ("Request to assign label to version 4 of model second, "
                                    "which is not currently available for inference")
    # nothing changed: both models still serve
    assert serving_version(lifecycle) == before
    assert versions(stub, "second")[1].state == AVAILABLE


def reload_failures(server) -> int:
    """How often the server logged that re-reading its config file failed."""
    return server.log_path.read_text(errors="replace").count("config reload from")


def test_config_file_poll_removes_model_and_survives_bad_file(lifecycle):
    """A model added by ReloadConfigRequest goes when the file (listing only 'hot') changes."""
    config, server = lifecycle["config"], lifecycle["server"]
    before = serving_version(lifecycle)
    lifecycle["model"].HandleReloadConfigRequest(reload_request({
        "hot": lifecycle["hot"], "second": {"base_path": lifecycle["models"]["multiout"]}}))
    assert versions(lifecycle["model"], "second")[1].state == AVAILABLE
    failures = reload_failures(server)
    config.write_text("model_config_list { this is not a config")
    wait_for(lambda: reload_failures(server) > failures, what="the poller to reject the file")
    assert serving_version(lifecycle) == before
    assert versions(lifecycle["model"], "second")[1].state == AVAILABLE
    write_models_config(config, {"hot": lifecycle["hot"]})
    wait_for(lambda: versions(lifecycle["model"], "second")[1].state == END,
             what="model 'second' to be unloaded")
    with pytest.raises(grpc.RpcError) as info:
        lifecycle["predict"].Predict(request("second"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert serving_version(lifecycle) == before
