"""Command line, startup failures, config helpers, `launch` and `deploy`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from model_server import config as cfg
from model_server.errors import ServingError

ROOT = Path(__file__).resolve().parents[2]


def run_server(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "model_server", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def test_version_and_unknown_arguments():
    result = run_server("--version", "--no_such_flag=1")
    assert result.returncode == 0
    assert "TensorFlow ModelServer: " in result.stdout
    assert "TensorFlow Library: 2." in result.stdout
    assert "unknown argument: --no_such_flag=1" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    ((), "server_options.model_config_file are empty"),
    (("--model_config_file={bad}",),
     "Error parsing text-format tensorflow.serving.ModelServerConfig"),
    (("--model_config_file={missing}",), "cannot read model config file"),
    (("--model_base_path=/x", "--batching_parameters_file={bad}"), "add --enable_batching"),
    (("--model_base_path=/x", "--port=0"), "--port must be non-zero"),
    (("--model_base_path=/x", "--grpc_channel_arguments=a=1,b"),
     "--grpc_channel_arguments: expected key=value, got 'b'"),
    (("--model_base_path=/x", "--rest_api_num_threads=0"), "--rest_api_num_threads must be > 0"),
    (("--model_base_path=/x", "--use_alts_credentials"), "use --ssl_config_file for TLS"),
])
def test_startup_errors(tmp_path, args, message):
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { nme: 'x' } }")
    args = [a.format(bad=bad, missing=tmp_path / "missing.config") for a in args]
    result = run_server(*args)
    assert result.returncode != 0
    assert "Failed to start server. Error: " in result.stderr
    assert message in result.stderr


def test_flags_become_each_components_options():
    from model_server import flags
    from model_server.limits import RequestLimits
    from model_server.options import RestOptions, ServerOptions

    options = ServerOptions.from_flags(flags.parse([
        "--model_base_path=/m", "--rest_api_port=8501", "--bind_address=0.0.0.0",
        "--rest_api_timeout_in_ms=0", "--rest_api_enable_cors_support",
        "--rest_api_max_body_bytes=10", "--grpc_channel_arguments=a=1,b=x,c=4294967296",
        "--saved_model_tags=serve, gpu", "--tensorflow_session_parallelism=2",
        "--tensorflow_intra_op_parallelism=3", "--enable_serialization_as_tensor_content",
        "--rest_api_num_threads=3", "--rest_api_max_connections=7",
        "--rest_api_header_timeout_in_ms=1500", "--max_request_candidates=9",
        "--max_request_tensor_bytes=99", "--grpc_max_receive_message_bytes=1000"]))
    limits = RequestLimits(max_tensor_bytes=99, max_candidates=9)
    assert options.rest == RestOptions(port=8501, bind_address="0.0.0.0", timeout_s=None,
                                       cors=True, max_body_bytes=10, num_threads=3,
                                       max_connections=7, header_timeout_s=1.5,
                                       body_timeout_s=30.0, limits=limits)
    assert options.grpc.limits == limits and options.grpc.max_receive_bytes == 1000
    assert not options.enable_model_config_reload
    assert options.grpc.bind_address == "0.0.0.0" and options.grpc.tensor_content
    # values outside int32 stay strings, as gRPC core expects
    assert options.grpc.channel_arguments == (("a", 1), ("b", "x"), ("c", "4294967296"))
    assert options.manager.saved_model_tags == ("serve", "gpu")
    assert options.manager.num_request_iterations_for_warmup == 1  # 0 means once
    assert (options.intra_op_threads, options.inter_op_threads) == (3, 2)
    assert options.model_base_path == "/m" and options.model_name == "default"


def test_bad_flag_value_exits():
    result = run_server("--port=abc")
    assert result.returncode != 0 and "--port" in result.stderr


def test_model_that_cannot_load_fails_startup(tmp_path):
    version = tmp_path / "broken" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"garbage")
    result = run_server(f"--model_base_path={tmp_path / 'broken'}", "--model_name=broken",
                        "--max_num_load_retries=0")
    assert result.returncode != 0
    assert "1 model(s) did not become available: {broken: " in result.stderr


def test_write_and_read_models_config(tmp_path):
    path = cfg.write_models_config(tmp_path / "m.config", {
        "a": tmp_path / "a",
        "b": {"base_path": "gs://bucket/b", "policy": [1, 3], "labels": {"stable": 1}},
        "c": {"base_path": tmp_path / "c", "policy": "all"},
        "d": {"base_path": tmp_path / "d", "policy": 2},
    })
    config = cfg.read_models_config(path)
    entries = {e.name: e for e in config.model_config_list.config}
    assert entries["a"].base_path == str(tmp_path / "a")
    assert entries["a"].model_platform == "tensorflow"
    assert list(entries["b"].model_version_policy.specific.versions) == [1, 3]
    assert dict(entries["b"].version_labels) == {"stable": 1}
    assert entries["c"].model_version_policy.HasField("all")
    assert cfg.aspired_versions(entries["a"], [1, 5, 3]) == {5}
    assert cfg.aspired_versions(entries["b"], [1, 2]) == {1}
    assert cfg.aspired_versions(entries["c"], [1, 2]) == {1, 2}
    assert cfg.aspired_versions(entries["d"], [1, 5, 3]) == {3, 5}
    relative = cfg.write_models_config(tmp_path / "r.config", {"a": tmp_path / "m" / "a"},
                                       relative_to=tmp_path)
    assert 'base_path: "m/a"' in relative.read_text()


def test_relative_paths_and_validation(tmp_path):
    config = text_format.Parse('model_config_list { config { name: "m" base_path: "models/m" '
                               'model_platform: "tensorflow" } }', cfg.ModelServerConfig())
    with pytest.raises(ServingError, match="to have an absolute path or URI"):
        cfg.validate_config(config)
    resolved = cfg.resolve_base_paths(config, tmp_path)
    assert resolved.model_config_list.config[0].base_path == str(tmp_path / "models" / "m")
    prefixed = cfg.resolve_base_paths(config, tmp_path, "/srv")
    assert prefixed.model_config_list.config[0].base_path == "/srv/models/m"
    cfg.validate_config(resolved)
    resolved.model_config_list.config[0].model_platform = ""
    with pytest.raises(ServingError, match="neither ModelServerConfig::model_type"):
        cfg.validate_config(resolved)
    resolved.model_config_list.config[0].model_platform = "pytorch"
    with pytest.raises(ServingError, match="unsupported platform pytorch"):
        cfg.validate_config(resolved)


def test_list_versions(tmp_path):
    for name in ("00000123", "7", "x1", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    assert {v: p.name for v, p in cfg.list_versions(str(tmp_path)).items()} == {
        123: "00000123", 7: "7"}
    assert cfg.list_versions(str(tmp_path / "missing")) is None


def test_batching_and_monitoring_files(tmp_path):
    good = tmp_path / "b.config"
    good.write_text("max_batch_size { value: 64 } allowed_batch_sizes: 32 "
                    "allowed_batch_sizes: 64 pad_variable_length_inputs: true")
    params = cfg.read_batching_parameters(good)
    assert params.max_batch_size.value == 64 and params.pad_variable_length_inputs
    assert not params.HasField("batch_timeout_micros")
    bad = tmp_path / "bad.config"
    bad.write_text("max_batch_size { value: 64 } allowed_batch_sizes: 32")
    with pytest.raises(cfg.ConfigError, match="must equal max_batch_size"):
        cfg.read_batching_parameters(bad)
    bad.write_text("max_batch_size: 64")
    with pytest.raises(cfg.ConfigError, match="BatchingParameters"):
        cfg.read_batching_parameters(bad)
    monitoring = tmp_path / "m.config"
    monitoring.write_text("prometheus_config { enable: true }")
    assert cfg.read_monitoring_config(monitoring).prometheus_config.enable
    # the project's own files parse
    for name, reader in (("models.config", cfg.read_models_config),
                         ("batching.config", cfg.read_batching_parameters),
                         ("monitoring.config", cfg.read_monitoring_config)):
        assert reader(ROOT / "serving_configs" / name) is not None


def test_launch_execs_real_binary_with_absolute_paths(tmp_path):
    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho REAL \"$@\"\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "model_server.launch",
            "--model_config_file=serving_configs/models.config",
            "--batching_parameters_file=serving_configs/batching.config",
            "--monitoring_config_file=serving_configs/monitoring.config",
            "--max_request_candidates=5000"]
    # the real binary listens on every interface: only when that is asked for
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 2 and "--bind_address=0.0.0.0" in result.stderr
    assert "REAL" not in result.stdout
    result = subprocess.run([*args, "--bind_address=0.0.0.0"], capture_output=True, text=True,
                            timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    # the embedded server's own flags are not passed on
    assert "--bind_address" not in line and "--max_request_candidates" not in line
    assert line.startswith("REAL ") and "--port=8500" in line and "--rest_api_port=8501" in line
    assert "--batching_parameters_file" not in line and "batching is off" in result.stderr
    config_arg = next(a for a in line.split() if a.startswith("--model_config_file="))
    written = cfg.read_models_config(config_arg.split("=", 1)[1])
    assert all(os.path.isabs(e.base_path) for e in written.model_config_list.config)
    assert written.model_config_list.config[0].base_path == str(ROOT / "saved_models" /
                                                                "dien_head")


def deploy_specs(out: Path) -> Path:
    from model_server import deploy

    assert deploy.main(["--out", str(out), "--model_config_file",
                        str(ROOT / "serving_configs" / "models.config"),
                        "--monitoring_config_file",
                        str(ROOT / "serving_configs" / "monitoring.config"),
                        "--saved_models", str(ROOT / "saved_models")]) == 0
    return out


def test_deploy_writes_container_specs(tmp_path):
    from model_server import deploy

    out = deploy_specs(tmp_path / "deploy")
    config = cfg.read_models_config(out / "models.config")
    assert [e.base_path for e in config.model_config_list.config][:2] == [
        "/models/dien_head", "/models/mimn_head"]
    script = (out / "docker-run.sh").read_text()
    assert "tensorflow/serving" in script and "--model_config_file=/config/models.config" in script
    assert "-p 127.0.0.1:8500:8500 -p 127.0.0.1:8501:8501" in script  # loopback by default
    k8s = (out / "k8s.yaml").read_text()
    assert "kind: Deployment" in k8s and "containerPort: 8500" in k8s
    assert deploy.main(["--out", str(out), "--saved_models", str(tmp_path / "elsewhere"),
                        "--model_config_file",
                        str(ROOT / "serving_configs" / "models.config")]) == 2


def test_deploy_kubernetes_spec_is_valid_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    k8s = (deploy_specs(tmp_path / "deploy") / "k8s.yaml").read_text()
    docs = list(yaml.safe_load_all(k8s))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    assert "models.config" in docs[0]["data"]


def test_readiness_probe_checks_every_model(main_server):
    """The Kubernetes probe script, run by bash against a real server's REST port."""
    from model_server.deploy import readiness_script

    def probe(models):
        return subprocess.run(["bash", "-c", readiness_script(models, main_server.rest_port)],
                              timeout=30).returncode

    assert probe(["versioned", "keras", "head"]) == 0
    assert probe(["versioned", "missing", "head"]) != 0
