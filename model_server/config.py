"""Config files of TF Serving: models.config, batching and monitoring, plus helpers to write them.

`models.config` is parsed with the real `tensorflow.serving.ModelServerConfig` message, so a
file that works here works with `tensorflow_model_server` and the other way round. The one
convenience: TF Serving insists on absolute base paths; here a relative `base_path` is resolved
against `--model_base_path_prefix` when given, else against the directory of the config file
(`launch` and `deploy` rewrite them to absolute paths for the real binary).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from model_server.errors import ServingError, invalid
from model_server.int_ranges import INT64_MAX
from model_server.protos import BatchingParameters, MonitoringConfig, SSLConfig

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the fix."""


def _parse_text(path: str | os.PathLike, message, what: str):
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(
            f"Error parsing text-format {message.DESCRIPTOR.full_name}: {path}: {exc}"
        ) from None


def read_models_config(path: str | os.PathLike) -> ModelServerConfig:
    return _parse_text(path, ModelServerConfig(), "model config")


def read_models_config_resolved(path: str | os.PathLike,
                                prefix: str | None = None) -> ModelServerConfig:
    """models.config with relative base paths resolved as the embedded server does: against
    `prefix` when given, else against the file's own directory."""
    return resolve_base_paths(read_models_config(path), Path(path).resolve().parent, prefix)


def read_batching_parameters(path: str | os.PathLike):
    params = _parse_text(path, BatchingParameters(), "batching parameters")
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] <= 0:
            raise ConfigError(f"{path}: allowed_batch_sizes must be positive and increasing, "
                              f"got {sizes}")
        if params.HasField("max_batch_size") and sizes[-1] != params.max_batch_size.value:
            raise ConfigError(f"{path}: the last entry of allowed_batch_sizes ({sizes[-1]}) must "
                              f"equal max_batch_size ({params.max_batch_size.value})")
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if params.HasField(name) and getattr(params, name).value <= 0:
            raise ConfigError(f"{path}: {name} must be > 0, got {getattr(params, name).value}")
    return params


def read_monitoring_config(path: str | os.PathLike):
    return _parse_text(path, MonitoringConfig(), "monitoring config")


def read_ssl_config(path: str | os.PathLike):
    """TF Serving's SSLConfig; a server key and certificate are required."""
    ssl = _parse_text(path, SSLConfig(), "SSL config")
    if not ssl.server_key or not ssl.server_cert:
        raise ConfigError(f"{path}: server_key and server_cert must both be set (PEM text)")
    if ssl.client_verify and not ssl.custom_ca:
        raise ConfigError(f"{path}: client_verify needs custom_ca, the PEM of the CA that "
                          f"signs client certificates")
    return ssl


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """What `--model_name`/`--model_base_path` mean: a one-model list, latest version."""
    config = ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = name
    entry.base_path = base_path
    entry.model_platform = "tensorflow"
    return config


def is_uri(path: str) -> bool:
    return "://" in path


def resolve_base_paths(config: ModelServerConfig, base_dir: str | os.PathLike | None,
                       prefix: str | None = None) -> ModelServerConfig:
    """A copy of `config` with relative base paths made absolute (prefix wins over base_dir).

    Relative paths that cannot be resolved are left alone; validation then rejects them
    with TF Serving's message.
    """
    out = ModelServerConfig()
    out.CopyFrom(config)
    if out.WhichOneof("config") != "model_config_list":
        return out
    for entry in out.model_config_list.config:
        path = entry.base_path
        if not path or is_uri(path) or os.path.isabs(path):
            continue
        root = prefix if prefix else (str(base_dir) if base_dir is not None else None)
        if root is None:
            continue
        if is_uri(root):
            entry.base_path = root.rstrip("/") + "/" + path
        else:
            entry.base_path = os.path.normpath(os.path.join(os.path.abspath(root), path))
    return out


def validate_config(config: ModelServerConfig,
                    previous: ModelServerConfig | None = None) -> None:
    """TF Serving's ReloadConfig checks, in its order (all INVALID_ARGUMENT): the config
    kind, unique names, absolute base paths, no model changing its platform from
    `previous`, then the platforms themselves."""
    kind = config.WhichOneof("config")
    if kind is None:
        return
    if kind != "model_config_list":
        raise invalid("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                      "ModelConfigList is currently supported")
    entries = config.model_config_list.config
    names = set()
    for entry in entries:
        if not entry.name:
            raise invalid("Illegal to have a model with an empty name in the config list")
        if entry.name in names:
            raise invalid(f"Illegal to list model {entry.name} multiple times in config list")
        names.add(entry.name)
    for entry in entries:
        path = entry.base_path
        if not (os.path.isabs(path) or is_uri(path)):
            raise invalid(f"Expected model {entry.name} to have an absolute path or URI; got "
                          f"base_path()={path}")
        if is_uri(path) and not path.startswith("file://"):
            raise invalid(f"Model {entry.name}: base_path {path} uses a file system this server "
                          f"cannot read; only local paths and file:// are supported")
    if previous is not None and previous.WhichOneof("config") == "model_config_list":
        old = {e.name: model_platform(e) for e in previous.model_config_list.config}
        for entry in entries:
            if entry.name in old and model_platform(entry) != old[entry.name]:
                raise invalid(f"Illegal to change a model's platform. For model {entry.name} "
                              f"platform was {old[entry.name]} and new platform requested is "
                              f"{model_platform(entry)}")
    for entry in entries:
        platform = model_platform(entry)
        if platform != "tensorflow":
            raise invalid(f"Model {entry.name} requests unsupported platform {platform}")


def check_under_prefix(config: ModelServerConfig, prefix: str) -> None:
    """PERMISSION_DENIED unless every (local, already validated) base path lies under the
    local directory `prefix`, symlinks resolved."""
    if config.WhichOneof("config") != "model_config_list":
        return
    root = None if is_uri(prefix) and not prefix.startswith("file://") else \
        os.path.realpath(local_path(prefix))
    for entry in config.model_config_list.config:
        real = os.path.realpath(local_path(entry.base_path))
        if root is None or os.path.commonpath([real, root]) != root:
            raise ServingError("PERMISSION_DENIED",
                               f"Model {entry.name}: base_path {entry.base_path} is not under "
                               f"--model_base_path_prefix={prefix}; reloads may only load "
                               f"models from there")


def model_platform(entry: ModelConfig) -> str:
    """TF Serving's GetPlatform: model_platform, or the deprecated model_type."""
    if entry.model_type:
        if entry.model_platform:
            raise invalid("Illegal setting both ModelServerConfig::model_type (deprecated) and "
                          f"ModelServerConfig::model_platform, model name is {entry.name}")
        if entry.model_type == model_server_config_pb2.TENSORFLOW:
            return "tensorflow"
        raise invalid(f"ModelServerConfig::model_type choice {entry.model_type} not "
                      f"supported.")
    if not entry.model_platform:
        raise invalid("Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                      f"ModelServerConfig::model_platform, model name is {entry.name}")
    return entry.model_platform


def local_path(base_path: str) -> Path:
    return Path(base_path[len("file://"):] if base_path.startswith("file://") else base_path)


def list_versions(base_path: str) -> dict[int, Path] | None:
    """Numeric child directories of a base path ({version: dir}); None if the path is missing.

    Names parse like TF's SimpleAtoi ("00000123" is 123); non-numeric names are ignored.
    """
    root = local_path(base_path)
    try:
        children = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return None
    versions: dict[int, Path] = {}
    for child in children:
        name = child.name
        if not name.isdigit() or not child.is_dir():
            continue
        number = int(name)
        if number > INT64_MAX:
            continue
        if number not in versions or name < versions[number].name:
            versions[number] = Path(child.path)
    return versions


def aspired_versions(entry: ModelConfig, available: Sequence[int]) -> set[int]:
    """Versions a model's version policy asks for, given the numbers found on disk."""
    policy = entry.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return set(available)
    if which == "specific":
        return set(policy.specific.versions) & set(available)
    num = max(policy.latest.num_versions, 1) if which == "latest" else 1
    return set(sorted(available)[-num:])


def write_models_config(
    path: str | os.PathLike,
    models: Mapping[str, str | os.PathLike | Mapping],
    *,
    version_policy: Mapping[str, str | int | Sequence[int]] | None = None,
    version_labels: Mapping[str, Mapping[str, int]] | None = None,
    relative_to: str | os.PathLike | None = None,
) -> Path:
    """Write a ModelServerConfig text proto listing `models` ({name: base_path}).

    A model value may also be a dict with `base_path`, `policy` and `labels`. A policy is
    "all", an int N (latest N) or a list of versions (specific). Paths are made absolute
    unless `relative_to` is given, in which case they are written relative to that folder.
    """
    config = build_models_config(models, version_policy=version_policy,
                                 version_labels=version_labels, relative_to=relative_to)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config))
    return path


def build_models_config(models, *, version_policy=None, version_labels=None,
                        relative_to=None) -> ModelServerConfig:
    config = ModelServerConfig()
    entries = config.model_config_list
    for name, spec in models.items():
        if isinstance(spec, Mapping):
            base = spec["base_path"]
            policy = spec.get("policy")
            labels = spec.get("labels")
        else:
            base, policy, labels = spec, None, None
        policy = policy if policy is not None else (version_policy or {}).get(name)
        labels = labels if labels is not None else (version_labels or {}).get(name)
        entry = entries.config.add(name=name, model_platform="tensorflow")
        base = str(base)
        if not is_uri(base):
            base = os.path.abspath(base)
            if relative_to is not None:
                base = os.path.relpath(base, os.path.abspath(relative_to))
        entry.base_path = base
        set_policy(entry, policy)
        for label, version in (labels or {}).items():
            entry.version_labels[label] = int(version)
    return config


def set_policy(entry: ModelConfig, policy) -> None:
    if policy is None or policy == "latest":
        return
    if policy == "all":
        entry.model_version_policy.all.SetInParent()
    elif isinstance(policy, int):
        entry.model_version_policy.latest.num_versions = policy
    elif isinstance(policy, Sequence) and not isinstance(policy, str):
        entry.model_version_policy.specific.versions.extend(int(v) for v in policy)
    else:
        raise ValueError(f"version policy must be 'latest', 'all', an int (latest N) or a list "
                         f"of versions, got {policy!r}")


__all__ = [
    "ConfigError", "ModelServerConfig", "ModelConfig", "ServingError", "read_models_config",
    "read_models_config_resolved",
    "read_batching_parameters", "read_monitoring_config", "read_ssl_config",
    "single_model_config",
    "resolve_base_paths", "validate_config", "list_versions", "aspired_versions",
    "write_models_config", "build_models_config", "DEFAULT_PROMETHEUS_PATH",
]
