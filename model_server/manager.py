"""Which model versions are loaded, and how requests find them.

The manager owns every servable's lifecycle: it polls each base path, applies the version
policy, loads and warms up new versions, then publishes them and unloads what is no longer
aspired, always loading the new version before unloading the old one (TF Serving's
availability-preserving policy). Loads (and their retries) run on a thread per model, outside
the manager's lock, so a model whose load keeps failing never holds up another model, a
config reload or the file poller. Requests never take its lock: they read an immutable
per-model snapshot that is swapped in one assignment, and a request that already holds a
version keeps it alive until it finishes, so a swap never fails a request. Version
policies and labels: docs/model_server.md, 'Models and versions'.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

from model_server import config as cfg
from model_server.errors import ServingError, invalid
from model_server.options import ManagerOptions
from model_server.servable import LoadedModel, load_model
from model_server.warmup import run_warmup

log = logging.getLogger("model_server")

# ServableState names as in apis/get_model_status.proto
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass
class VersionStatus:
    version: int
    path: Path
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    loaded: LoadedModel | None = None


@dataclasses.dataclass(frozen=True)
class Serving:
    """What requests see for one model: loaded versions, the newest, labels."""

    versions: dict
    latest: LoadedModel | None
    labels: dict


class ModelState:
    """One configured model: its config entry and every version seen so far."""

    def __init__(self, entry):
        self.entry = entry
        self.versions: dict[int, VersionStatus] = {}
        self.failed_paths: set[str] = set()
        self.missing_logged = False  # "base path does not exist" is logged once, not per poll
        self.loading = False         # one load at a time per model (its loader thread)
        self.retired = threading.Event()  # stops the retries of a removed model

    @property
    def name(self) -> str:
        return self.entry.name


class ModelManager:
    def __init__(self, options: ManagerOptions, metrics=None, batching=None, readiness=None):
        self.options = options
        self.metrics = metrics
        self.batching = batching
        self.readiness = readiness
        self.serving: dict[str, Serving] = {}      # read by requests without a lock
        self.states: dict[str, ModelState] = {}    # every model ever configured (for status)
        self.configured: list[str] = []
        self.config = cfg.ModelServerConfig()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a load finished
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ request path
    def resolve(self, name: str, version: int | None = None, label: str | None = None
                ) -> LoadedModel:
        if not name:
            raise invalid("ModelSpec has no name specified.")
        serving = self.serving.get(name)
        if label:
            if serving is None or label not in serving.labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = serving.labels[label]
        if version is not None:
            loaded = serving.versions.get(version) if serving is not None else None
            if loaded is None:
                raise ServingError("NOT_FOUND",
                                   f"Servable not found for request: Specific({name}, {version})")
            return loaded
        if serving is None or serving.latest is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        return serving.latest

    def resolve_spec(self, spec) -> LoadedModel:
        """Resolve a tensorflow.serving.ModelSpec (version, version_label or latest)."""
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return self.resolve(spec.name, version=spec.version.value)
        if choice == "version_label":
            return self.resolve(spec.name, label=spec.version_label)
        return self.resolve(spec.name)

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every version ever seen, highest first (or the one asked for)."""
        state = self.states.get(name)
        if state is None or not state.versions:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        if version is not None:
            found = state.versions.get(version)
            if found is None:
                raise ServingError("NOT_FOUND", f"Could not find version {version} of model "
                                   f"{name}")
            return [found]
        return [state.versions[v] for v in sorted(state.versions, reverse=True)]

    # ------------------------------------------------------------------ configuration
    def apply_config(self, config, *, initial: bool = False, wait_timeout: float | None = None,
                     wait: bool = True) -> None:
        """Replace the model list (TF Serving's ReloadConfig). With `wait`, block (without
        the lock) until the new models serve or their loads failed for good."""
        with self._lock:
            cfg.validate_config(config, self.config)
            if config.WhichOneof("config") is None:
                return
            entries = {e.name: e for e in config.model_config_list.config}
            if not initial:
                self._check_labels(entries)
            self.config = cfg.ModelServerConfig()
            self.config.CopyFrom(config)
            new_models = [n for n in entries if n not in self.configured]
            for name in self.configured:
                if name not in entries:
                    self._retire(name)
            for name, entry in entries.items():
                state = self.states.get(name)
                if state is None or name not in self.configured:
                    state = ModelState(entry)
                    if name in self.states:  # re-added: keep the history for status
                        state.versions = self.states[name].versions
                    self.states[name] = state
                else:
                    if entry.base_path != state.entry.base_path:
                        state.failed_paths.clear()
                    state.entry = entry
            self.configured = list(entries)
            for name in self.configured:
                self._reconcile(self.states[name])
                self._publish(self.states[name])
        if not wait:
            return
        self._wait_available(new_models, wait_timeout)
        if initial:
            with self._lock:
                self._check_labels(entries, initial=True)
                for name in self.configured:
                    self._publish(self.states[name])

    def _check_labels(self, entries, initial: bool = False) -> None:
        for name, entry in entries.items():
            serving = self.serving.get(name)
            old_labels = serving.labels if serving is not None else {}
            available = serving.versions if serving is not None else {}
            for label, version in entry.version_labels.items():
                if version in available:
                    continue
                is_new = label not in old_labels or old_labels[label] == version
                if self.options.allow_version_labels_for_unavailable_models and (
                        initial or is_new):
                    continue
                raise ServingError(
                    "FAILED_PRECONDITION",
                    f"Request to assign label to version {version} of model {name}, which is "
                    f"not currently available for inference")

    def _wait_available(self, names, timeout) -> None:
        """Wait until every aspired version of each model is AVAILABLE or failed for good;
        fail if a model has none AVAILABLE then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        warned = set()
        while True:
            pending, failed = [], {}
            for name in names:
                state = self.states.get(name)
                if state is None or name not in self.configured:
                    continue
                aspired = self._aspired(state) or set()
                done = [state.versions[v] for v in aspired if v in state.versions and
                        state.versions[v].state in (AVAILABLE, END)]
                if aspired and len(done) == len(aspired) and not state.loading:
                    if not any(v.state == AVAILABLE for v in done):
                        failed[name] = next((v.error_message for v in done if v.error_message),
                                            "unloaded")
                else:
                    pending.append(name)
                    if name not in warned and not aspired:
                        warned.add(name)
                        log.warning("No versions of servable %s found under base path %s",
                                    name, state.entry.base_path)
            if failed and not pending:
                detail = ", ".join(f"{{{n}: {msg}}}" for n, msg in failed.items())
                raise ServingError("UNKNOWN", f"{len(failed)} model(s) did not become "
                                   f"available: {detail}")
            if not pending:
                return
            if self._stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                raise ServingError("UNAVAILABLE", f"models still loading: {pending}")
            with self._lock:
                self._changed.wait(max(min(self.options.file_system_poll_wait_seconds, 1.0),
                                       0.1))
                for name in pending:  # versions may have appeared on disk meanwhile
                    if name in self.states:
                        self._reconcile(self.states[name])
                        self._publish(self.states[name])

    # ------------------------------------------------------------------ polling
    def start_polling(self) -> None:
        period = self.options.file_system_poll_wait_seconds
        if period <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll_loop, args=(period,),
                                        name="fs_poller", daemon=True)
        self._poller.start()

    def _poll_loop(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must survive anything
                log.exception("file system poll failed")

    def poll_once(self) -> None:
        with self._lock:
            for name in list(self.configured):
                self._reconcile(self.states[name])
                self._publish(self.states[name])

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._changed.notify_all()
        if self._poller is not None:
            self._poller.join(timeout=5)

    # ------------------------------------------------------------------ lifecycle
    def _aspired(self, state: ModelState) -> set[int] | None:
        """Versions the policy wants among those on disk; None if the base path is missing."""
        listed = cfg.list_versions(state.entry.base_path)
        return None if listed is None else cfg.aspired_versions(state.entry, list(listed))

    def _reconcile(self, state: ModelState) -> None:
        """Load newly aspired versions (highest first), then unload the rest safely."""
        listed = cfg.list_versions(state.entry.base_path)
        if listed is None:
            if not state.missing_logged:
                log.error("File system storage path source: base path %s of model %s does not "
                          "exist", state.entry.base_path, state.name)
                state.missing_logged = True
            return
        state.missing_logged = False
        aspired = cfg.aspired_versions(state.entry, list(listed))
        for version in sorted(aspired, reverse=True):
            current = state.versions.get(version)
            path = listed[version]
            if state.loading:
                break  # the loader thread reconciles again when it is done
            if current is not None and current.state in (LOADING, AVAILABLE):
                continue
            if str(path) in state.failed_paths:
                continue
            self._start_load(state, version, path)
        serving = [v for v, s in state.versions.items() if s.state == AVAILABLE]
        unaspired = sorted(v for v in serving if v not in aspired)
        any_aspired_available = any(v in aspired for v in serving)
        if not aspired or any_aspired_available:
            to_unload = unaspired
        else:
            to_unload = unaspired[:-1]  # keep the newest old version until a new one serves
        for version in to_unload:
            self._unload(state, version)
        # forget failures of versions that are no longer on disk, so a re-export retries
        state.failed_paths &= {str(p) for p in listed.values()}

    def _start_load(self, state: ModelState, version: int, path: Path) -> None:
        """Mark `version` LOADING and load it on its own thread (lock held)."""
        status = VersionStatus(version, path, LOADING)
        state.versions[version] = status
        state.loading = True
        threading.Thread(target=self._load, args=(state, status), daemon=True,
                         name=f"load_{state.name}_{version}").start()

    def _load(self, state: ModelState, status: VersionStatus) -> None:
        """Load, warm up and retry without the lock; then publish under it."""
        loaded = self._load_with_retries(state, status)
        with self._lock:
            state.loading = False
            current = (status.state == LOADING and not state.retired.is_set()
                       and self.states.get(state.name) is state)
            if loaded is not None and current:
                status.loaded = loaded
                status.error_code, status.error_message = "OK", ""
                status.state = AVAILABLE
            else:
                if loaded is not None and self.batching is not None:
                    self.batching.detach(loaded)  # retired while loading
                if status.state == LOADING:
                    status.state = END
                if loaded is None:
                    state.failed_paths.add(str(status.path))
            if not state.retired.is_set() and not self._stop.is_set():
                self._reconcile(state)
                self._publish(state)
            self._changed.notify_all()

    def _load_with_retries(self, state: ModelState, status: VersionStatus
                           ) -> LoadedModel | None:
        version, path = status.version, status.path
        attempts = max(self.options.max_num_load_retries, 0) + 1
        for attempt in range(attempts):
            started = time.monotonic()
            try:
                loaded = load_model(state.name, version, path, self.options.saved_model_tags,
                                    self.options.xla_cpu_compilation_enabled)
                if self.batching is not None:
                    self.batching.attach(loaded)
                if self.options.enable_model_warmup:
                    run_warmup(loaded, self.options.num_request_iterations_for_warmup,
                               self.metrics)
            except ServingError as exc:
                if self.metrics is not None:
                    self.metrics.load(str(path), False, 0)
                log.error("Loading servable: {name: %s version: %d} failed: %s",
                          state.name, version, exc.message)
                status.error_code, status.error_message = exc.code, exc.message
                interval = self.options.load_retry_interval_micros / 1e6
                if attempt + 1 < attempts and not self._stop.is_set() and not \
                        state.retired.wait(interval) and not self._stop.is_set():
                    log.info("Retrying load of %s version %d (attempt %d of %d)", state.name,
                             version, attempt + 2, attempts)
                    continue
                return None
            micros = (time.monotonic() - started) * 1e6
            if self.metrics is not None:
                # load_latency is the SavedModel load itself (TF's loader), not the warm-up
                self.metrics.load(str(path), True, sum(loaded.stage_micros.values()),
                                  loaded.stage_micros)
            log.info("Successfully loaded servable version {name: %s version: %d} in %.0f ms",
                     state.name, version, micros / 1e3)
            return loaded
        return None

    def _unload(self, state: ModelState, version: int) -> None:
        status = state.versions[version]
        status.state = UNLOADING
        loaded = status.loaded
        status.loaded = None
        self._publish(state)  # stop routing new requests to it first
        if self.batching is not None and loaded is not None:
            self.batching.detach(loaded)
        status.state = END
        log.info("Unloaded servable version {name: %s version: %d}", state.name, version)

    def _retire(self, name: str) -> None:
        state = self.states[name]
        state.retired.set()
        for version, status in list(state.versions.items()):
            if status.state in (AVAILABLE, LOADING):
                self._unload(state, version)
        self.serving.pop(name, None)
        if self.readiness is not None:
            self.readiness.set_model(name, False)

    def _publish(self, state: ModelState) -> None:
        """Swap in the snapshot requests read for this model (see `resolve`)."""
        if state.name not in self.configured:
            return
        versions = {v: s.loaded for v, s in state.versions.items()
                    if s.state == AVAILABLE and s.loaded is not None}
        latest = versions[max(versions)] if versions else None
        labels = dict(state.entry.version_labels)
        self.serving[state.name] = Serving(versions, latest, labels)
        if self.readiness is not None:
            self.readiness.set_model(state.name, latest is not None)
