"""Who may talk to the server: gRPC over TLS and mutual TLS from TF Serving's
--ssl_config_file (certificates made by trustme), and model-config reloads only when
enabled and only under --model_base_path_prefix (docs/model_server.md, 'Security')."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
import trustme
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from devkit.ports import free_port
from model_server import flags
from model_server.config import build_models_config, write_models_config
from model_server.options import ServerOptions
from model_server.protos import SSLConfig
from model_server.server import ModelServer


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_ssl_config(path, ca, client_verify: bool):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    config = SSLConfig(server_key=cert.private_key_pem.bytes().decode(),
                       server_cert=cert.cert_chain_pems[0].bytes().decode(),
                       custom_ca=ca.cert_pem.bytes().decode() if client_verify else "",
                       client_verify=client_verify)
    path.write_text(text_format.MessageToString(config))
    return path


@pytest.fixture(scope="module", params=[False, True], ids=["tls", "mutual_tls"])
def tls_server(request, ca, server_models, tmp_path_factory):
    """The embedded server in this process, gRPC only, with an SSLConfig file."""
    folder = tmp_path_factory.mktemp("tls")
    config = write_models_config(folder / "models.config",
                                 {"versioned": server_models["versioned"]})
    ssl = write_ssl_config(folder / "ssl.config", ca, client_verify=request.param)
    port = free_port()
    server = ModelServer(ServerOptions.from_flags(flags.parse([
        f"--model_config_file={config}", f"--port={port}", f"--ssl_config_file={ssl}",
        "--file_system_poll_wait_seconds=0"]))).start()
    yield request.param, port
    server.stop()


def predict(channel) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "versioned"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return list(stub.Predict(request, timeout=10).outputs["y"].float_val)


def secure_channel(port, ca, client_cert=None):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client_cert.private_key_pem.bytes() if client_cert else None,
        certificate_chain=client_cert.cert_chain_pems[0].bytes() if client_cert else None)
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_tls_end_to_end(tls_server, ca):
    client_verify, port = tls_server
    client_cert = ca.issue_cert("client@example.com")
    with secure_channel(port, ca, client_cert) as channel:
        assert predict(channel) == [3.0]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, \
            pytest.raises(grpc.RpcError) as info:
        predict(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with secure_channel(port, ca) as channel:  # no client certificate
        if client_verify:
            with pytest.raises(grpc.RpcError) as info:
                predict(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert predict(channel) == [3.0]
    stranger = trustme.CA().issue_cert("mallory@example.com")  # signed by another CA
    with secure_channel(port, ca, stranger) as channel:
        if client_verify:
            with pytest.raises(grpc.RpcError):
                predict(channel)
        else:
            assert predict(channel) == [3.0]


@pytest.mark.parametrize(("text", "message"), [
    ('server_key: "k"', "server_key and server_cert must both be set"),
    ('server_key: "k" server_cert: "c" client_verify: true', "client_verify needs custom_ca"),
    ("server_key: 1 x", "Error parsing text-format tensorflow.serving.SSLConfig"),
])
def test_bad_ssl_config_fails_startup(tmp_path, text, message):
    from model_server.errors import StartupError

    (tmp_path / "ssl.config").write_text(text)
    with pytest.raises(StartupError, match=message):
        ModelServer(ServerOptions.from_flags(flags.parse([
            "--model_base_path=/nowhere", f"--ssl_config_file={tmp_path / 'ssl.config'}"])))


def test_reload_needs_a_prefix():
    from model_server.errors import StartupError

    with pytest.raises(StartupError, match="needs --model_base_path_prefix"):
        ServerOptions.from_flags(flags.parse(["--model_base_path=/m",
                                              "--enable_model_config_reload"]))


@pytest.fixture(scope="module")
def reload_server(server_models, tmp_path_factory, model_server_factory):
    """Reloads enabled, prefix = the folder of the test models."""
    prefix = server_models["versioned"].parent
    server = model_server_factory({"versioned": server_models["versioned"]}, [
        "--enable_model_config_reload", f"--model_base_path_prefix={prefix}"])
    channel = grpc.insecure_channel(server.grpc_target)
    yield server, channel, prefix
    channel.close()


def reload(channel, config) -> tuple[grpc.StatusCode, str]:
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    try:
        response = stub.HandleReloadConfigRequest(request, timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, response.status.error_message


def config_text(text: str):
    from model_server.config import ModelServerConfig

    return text_format.Parse(text, ModelServerConfig())


@pytest.mark.parametrize(("config", "code", "message"), [
    # the issue's attack: unload everything and load whatever lies under /etc
    ('config { name: "versioned" base_path: "/etc" model_platform: "tensorflow" }',
     grpc.StatusCode.PERMISSION_DENIED,
     "Model versioned: base_path /etc is not under --model_base_path_prefix="),
    ('config { name: "up" base_path: "{prefix}/../.." model_platform: "tensorflow" }',
     grpc.StatusCode.PERMISSION_DENIED, "Model up: base_path "),
    # TF Serving's ReloadConfig texts
    ('config { name: "rel" base_path: "versioned" model_platform: "tensorflow" }',
     grpc.StatusCode.INVALID_ARGUMENT,
     "Expected model rel to have an absolute path or URI; got base_path()=versioned"),
    ('config { name: "versioned" base_path: "{prefix}/versioned" model_platform: "pytorch" }',
     grpc.StatusCode.INVALID_ARGUMENT,
     "Illegal to change a model's platform. For model versioned platform was tensorflow "
     "and new platform requested is pytorch"),
    ('config { name: "versioned" base_path: "{prefix}/versioned" }',
     grpc.StatusCode.INVALID_ARGUMENT,
     "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
     "ModelServerConfig::model_platform, model name is versioned"),
])
def test_reload_refusals_leave_the_served_model(reload_server, config, code, message):
    server, channel, prefix = reload_server
    text = "model_config_list { " + config.replace("{prefix}", str(prefix)) + " }"
    got_code, got_message = reload(channel, config_text(text))
    assert got_code == code
    assert got_message.startswith(message)
    assert predict(channel) == [3.0]


def test_reload_under_the_prefix_works(reload_server, server_models):
    server, channel, prefix = reload_server
    config = build_models_config({"versioned": server_models["versioned"],
                                  "head": server_models["head"]})
    assert reload(channel, config) == (grpc.StatusCode.OK, "")
    assert predict(channel) == [3.0]
