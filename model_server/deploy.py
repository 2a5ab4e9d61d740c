"""`make deploy`: the command and container specs that run the real TF Serving.

Writes a container-ready copy of serving_configs/ (base paths rewritten to the mount
path of saved_models/ inside the container), a `docker run` script and a Kubernetes
Deployment + Service + ConfigMap for the `tensorflow/serving` image, using the same flags
`make serve` uses, and prints the docker command. Docker publishes the ports on 127.0.0.1
unless `--publish_address` says otherwise; the Kubernetes pod is ready only when every
configured model reports a version AVAILABLE.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from google.protobuf import text_format

from model_server.config import ConfigError, read_models_config_resolved

CONFIG_MOUNT = "/config"


def container_config(config_file: Path, saved_models: Path, models_mount: str,
                     prefix: str | None = None):
    """models.config with base paths under `saved_models` mapped to `models_mount`."""
    config = read_models_config_resolved(config_file, prefix)
    root = saved_models.resolve()
    for entry in config.model_config_list.config:
        if "://" in entry.base_path:
            continue  # gs://, s3://: TF Serving reads them directly
        path = Path(entry.base_path)
        try:
            rel = path.relative_to(root)
        except ValueError:
            raise ConfigError(f"model {entry.name}: base_path {path} is not under {root}; "
                              f"mount it into the container yourself or pass --saved_models"
                              ) from None
        entry.base_path = f"{models_mount.rstrip('/')}/{rel.as_posix()}"
    return config


def server_args(batching: bool, monitoring: bool, poll_seconds: int, xla: bool = False
                ) -> list[str]:
    args = ["--port=8500", "--rest_api_port=8501",
            f"--model_config_file={CONFIG_MOUNT}/models.config",
            f"--model_config_file_poll_wait_seconds={poll_seconds}"]
    if xla:  # exports compiled with jit_compile=True fail in TF Serving without it
        args.append("--xla_cpu_compilation_enabled=true")
    if monitoring:
        args.append(f"--monitoring_config_file={CONFIG_MOUNT}/monitoring.config")
    if batching:
        args += ["--enable_batching", f"--batching_parameters_file={CONFIG_MOUNT}/batching.config"]
    return args


def docker_command(image: str, saved_models: Path, out: Path, models_mount: str,
                   args: list[str], name: str, publish_address: str = "127.0.0.1"
                   ) -> list[str]:
    ports = [f"{publish_address}:{port}:{port}" if publish_address else f"{port}:{port}"
             for port in (8500, 8501)]
    return ["docker", "run", "--rm", "--name", name, "-p", ports[0], "-p", ports[1],
            "-v", f"{saved_models.resolve()}:{models_mount}:ro",
            "-v", f"{out.resolve()}:{CONFIG_MOUNT}:ro", image, *args]


def readiness_script(models: list[str], port: int = 8501) -> str:
    """A bash check (the serving image has bash and grep, no curl) that every model has a
    version AVAILABLE, over REST status: GET /v1/models/<name>."""
    checks = " && ".join(
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /v1/models/{m} HTTP/1.0\\r\\n\\r\\n' >&3"
        f" && grep -q '\"AVAILABLE\"' <&3" for m in models)
    return checks or "true"


def kubernetes_yaml(image: str, args: list[str], files: dict[str, str], name: str,
                    models_mount: str, models_claim: str, replicas: int,
                    models: list[str]) -> str:
    def block(text: str, indent: int) -> str:
        pad = " " * indent
        return "\n".join(pad + line if line else line for line in text.splitlines())

    config_map = "\n".join(f"  {key}: |\n{block(value, 4)}" for key, value in files.items())
    arg_lines = "\n".join(f"            - {shlex.quote(a)}" for a in args)
    return f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}-config
data:
{config_map}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "8501"
        prometheus.io/path: /monitoring/prometheus/metrics
    spec:
      containers:
        - name: tensorflow-serving
          image: {image}
          args:
{arg_lines}
          ports:
            - {{name: grpc, containerPort: 8500}}
            - {{name: http, containerPort: 8501}}
          readinessProbe:  # every model has a version AVAILABLE
            exec:
              command: ["bash", "-c", {json.dumps(readiness_script(models))}]
            periodSeconds: 5
          livenessProbe:
            tcpSocket: {{port: 8500}}
            initialDelaySeconds: 30
          resources:
            requests: {{cpu: "2", memory: 2Gi}}
          volumeMounts:
            - {{name: models, mountPath: {models_mount}, readOnly: true}}
            - {{name: config, mountPath: {CONFIG_MOUNT}, readOnly: true}}
      volumes:
        - name: models
          persistentVolumeClaim: {{claimName: {models_claim}}}
        - name: config
          configMap: {{name: {name}-config}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {name}}}
  ports:
    - {{name: grpc, port: 8500, targetPort: 8500}}
    - {{name: http, port: 8501, targetPort: 8501}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_server.deploy",
        description="Write the docker run command and Kubernetes spec for the real TF Serving "
                    "with serving_configs/ (base paths rewritten to the container mount).")
    parser.add_argument("--model_config_file", default="serving_configs/models.config")
    parser.add_argument("--batching_parameters_file", default="serving_configs/batching.config")
    parser.add_argument("--monitoring_config_file", default="serving_configs/monitoring.config")
    parser.add_argument("--saved_models", default="saved_models",
                        help="host folder holding <model>_<part>/<version>/ (default %(default)s)")
    parser.add_argument("--models_mount", default="/models",
                        help="where saved_models is mounted in the container (default %(default)s)")
    parser.add_argument("--model_base_path_prefix", default=None,
                        help="resolve relative base paths against this instead of the config "
                             "file's directory")
    parser.add_argument("--image", default="tensorflow/serving:latest",
                        help="serving image; pin a release tag in production (default %(default)s)")
    parser.add_argument("--enable_batching", action=argparse.BooleanOptionalAction,
                        default=True, help="pass --enable_batching and the batching file "
                        "(default on: contract v2 heads and full models batch)")
    parser.add_argument("--config_poll_seconds", type=int, default=60,
                        help="--model_config_file_poll_wait_seconds in the container")
    parser.add_argument("--publish_address", default="127.0.0.1",
                        help="host address docker publishes 8500/8501 on; 0.0.0.0 (or '') "
                             "for every interface (default %(default)s)")
    parser.add_argument("--name", default="uic-serving", help="container / Deployment name")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--models_claim", default="uic-saved-models",
                        help="PersistentVolumeClaim holding saved_models for Kubernetes")
    parser.add_argument("--out", default="build/deploy", help="output folder (default %(default)s)")
    opts = parser.parse_args(argv)

    out = Path(opts.out)
    saved_models = Path(opts.saved_models)
    try:
        config = container_config(Path(opts.model_config_file), saved_models, opts.models_mount,
                                  opts.model_base_path_prefix)
    except (ConfigError, OSError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    files = {"models.config": text_format.MessageToString(config)}
    monitoring = bool(opts.monitoring_config_file) and Path(opts.monitoring_config_file).is_file()
    if monitoring:
        files["monitoring.config"] = Path(opts.monitoring_config_file).read_text()
    if opts.enable_batching:
        if not Path(opts.batching_parameters_file).is_file():
            print(f"deploy: batching file {opts.batching_parameters_file} not found",
                  file=sys.stderr)
            return 2
        files["batching.config"] = Path(opts.batching_parameters_file).read_text()
    for key, text in files.items():
        (out / key).write_text(text)
    from model_server.launch import exports_use_xla

    xla = exports_use_xla(opts.model_config_file, opts.model_base_path_prefix)
    args = server_args(opts.enable_batching, monitoring, opts.config_poll_seconds, xla)
    command = docker_command(opts.image, saved_models, out, opts.models_mount, args, opts.name,
                             opts.publish_address)
    script = out / "docker-run.sh"
    script.write_text("#!/bin/sh\n# Real TF Serving with the project's configs.\nexec "
                      + shlex.join(command) + "\n")
    script.chmod(0o755)
    models = [entry.name for entry in config.model_config_list.config]
    (out / "k8s.yaml").write_text(kubernetes_yaml(opts.image, args, files, opts.name,
                                                  opts.models_mount, opts.models_claim,
                                                  opts.replicas, models))
    print(f"# wrote {', '.join(sorted(files))}, docker-run.sh and k8s.yaml to {out}/")
    print(f"# docker (models from {saved_models.resolve()} mounted at {opts.models_mount}):")
    print(shlex.join(command))
    print(f"# kubernetes: kubectl apply -f {out / 'k8s.yaml'}  (copy saved_models into the "
          f"PVC {opts.models_claim} first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
