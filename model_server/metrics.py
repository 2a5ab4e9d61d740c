"""Prometheus metrics under TF Serving's names, rendered in TF Serving's text format.

The values live in prometheus-client metrics on a private registry. The page is written here
rather than by `generate_latest` because TF Serving's exporter differs from the client's
defaults (docs/model_server.md, 'Metrics'): counters keep their bare name (no `_total`), there is no `# HELP`
and no `_created`, and bucket limits use 6 significant digits. Dashboards built against the
real server then read this one unchanged.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# TF Serving's request latency buckets: 10 * 1.8^i microseconds, i < 33
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
_PREFIX = ":tensorflow:serving:"


class ServerMetrics:
    """The counters and histograms the model server updates; cheap on the request path."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        reg = self.registry
        self.request_count = Counter(
            _PREFIX + "request_count", "requests", ["model_name", "status"], registry=reg)
        self.request_latency = Histogram(
            _PREFIX + "request_latency", "request latency (us)",
            ["model_name", "API", "entrypoint"], buckets=LATENCY_BUCKETS_US, registry=reg)
        self.runtime_latency = Histogram(
            _PREFIX + "runtime_latency", "run latency (us)", ["model_name", "API", "runtime"],
            buckets=LATENCY_BUCKETS_US, registry=reg)
        self.load_attempt_count = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count", "loads", ["model_path", "status"],
            registry=reg)
        self.load_latency = Counter(
            ":tensorflow:cc:saved_model:load_latency", "load latency (us)", ["model_path"],
            registry=reg)
        self.load_latency_by_stage = Histogram(
            ":tensorflow:cc:saved_model:load_latency_by_stage", "load latency per stage (us)",
            ["model_path", "stage"], buckets=LATENCY_BUCKETS_US, registry=reg)
        self.warmup_latency = Histogram(
            _PREFIX + "model_warmup_latency", "warm-up latency (us)", ["model_path", "status"],
            buckets=LATENCY_BUCKETS_US, registry=reg)
        self.warmup_records = Counter(
            _PREFIX + "model_warmup_records_read", "warm-up records", ["model_path", "status"],
            registry=reg)
        self.queuing_latency = Histogram(
            _PREFIX + "batching_session:queuing_latency", "batch queue wait (us)",
            ["thread_pool_name"], buckets=LATENCY_BUCKETS_US, registry=reg)
        self.wrapped_run_count = Counter(
            _PREFIX + "batching_session:wrapped_run_count", "batched runs", [], registry=reg)
        self._children: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def track_in_flight(self, count) -> None:
        """Export `count()` (requests admitted and not finished, all models) as a gauge."""
        gauge = Gauge(":uic:model_server:requests_in_flight", "requests running or queued",
                      registry=self.registry)
        gauge.set_function(count)

    def _child(self, metric, labels: tuple):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = metric.labels(*labels)
                    self._children[key] = child
        return child

    # --- request path ----------------------------------------------------------------
    def request(self, model: str, status: str) -> None:
        self._child(self.request_count, (model, status)).inc()

    def latency(self, model: str, api: str, entrypoint: str, micros: float) -> None:
        self._child(self.request_latency, (model, api, entrypoint)).observe(micros)

    def runtime(self, model: str, api: str, micros: float) -> None:
        self._child(self.runtime_latency, (model, api, "TF1")).observe(micros)

    # --- lifecycle -------------------------------------------------------------------
    def load(self, model_path: str, ok: bool, micros: float,
             stage_micros: dict[str, float] | None = None) -> None:
        """One SavedModel load: attempts, and on success its latency, total and per stage."""
        self._child(self.load_attempt_count, (model_path, "success" if ok else "fail")).inc()
        if ok:
            self._child(self.load_latency, (model_path,)).inc(micros)
            for stage, stage_us in (stage_micros or {}).items():
                self._child(self.load_latency_by_stage, (model_path, stage)).observe(stage_us)

    def warmup(self, model_path: str, status: str, records: int, micros: float) -> None:
        self._child(self.warmup_latency, (model_path, status)).observe(micros)
        self._child(self.warmup_records, (model_path, status)).inc(records)

    def counter_value(self, name: str) -> float:
        """Sum of a counter over all labels (HandleReloadConfigRequest.metric_names)."""
        total = 0.0
        for family in self.registry.collect():
            if family.name in (name, name.removesuffix("_total")) and family.type == "counter":
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    # --- exposition ------------------------------------------------------------------
    def render(self) -> bytes:
        lines: list[str] = []
        for family in self.registry.collect():
            lines.append(f"# TYPE {family.name} {family.type}")
            for sample in family.samples:
                name = sample.name
                if name.endswith("_created"):
                    continue
                if family.type == "counter":
                    if not name.endswith("_total"):
                        continue
                    name = family.name
                labels = dict(sample.labels)
                if "le" in labels:
                    labels["le"] = _format_le(labels["le"])
                lines.append(f"{name}{_labels(labels)} {_number(sample.value)}")
        return ("\n".join(lines) + "\n").encode()


def _format_le(value: str) -> str:
    if value in ("+Inf", "inf"):
        return "+Inf"
    return f"{float(value):.6g}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels.items())
    return "{" + inner + "}"
