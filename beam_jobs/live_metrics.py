"""The stream job's Prometheus metrics, served on ``--metrics_port`` (127.0.0.1).

Counters of this process (what its DoFns did since it started; the in-process runner runs
them all here): ``uic_stream_applied_total``, ``uic_stream_acked_total``,
``uic_stream_dead_letters_total``, ``uic_stream_cas_conflicts_total``,
``uic_stream_reconnects_total`` (Redis outages survived). Gauges read from Redis at each
scrape (`beam_jobs.status`, so every worker of a group reports the same group-wide values):
``uic_stream_lag_entries``, ``uic_stream_pending_entries``,
``uic_stream_oldest_pending_seconds``, ``uic_stream_dead_letter_entries`` and
``uic_stream_redis_up`` (0 while Redis cannot be read; the other gauges are then absent).
"""

from __future__ import annotations

import dataclasses
import logging

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from uic.store import StoreConfig, StoreError

_LOG = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=False)
APPLIED = Counter("uic_stream_applied", "events folded into interest states",
                  registry=REGISTRY)
ACKED = Counter("uic_stream_acked", "stream entries acknowledged after their writes",
                registry=REGISTRY)
DEAD_LETTERS = Counter("uic_stream_dead_letters", "entries dead-lettered by this process",
                       registry=REGISTRY)
CAS_CONFLICTS = Counter("uic_stream_cas_conflicts",
                        "state writes refused because another writer got in between (re-read, "
                        "retried)", registry=REGISTRY)
RECONNECTS = Counter("uic_stream_reconnects", "Redis outages survived", registry=REGISTRY)


class _GroupGauges(Collector):
    """The consumer group's lag, pending entries and dead letters, read at scrape time."""

    def __init__(self, config: StoreConfig, stream: str, group: str):
        # a scrape must not hang on a silent Redis, nor retry
        self.config = dataclasses.replace(config, socket_timeout_s=2.0, connect_timeout_s=2.0,
                                          retries=0)
        self.stream, self.group = stream, group
        self._store = None

    def collect(self):
        from beam_jobs.status import read_status

        up = GaugeMetricFamily("uic_stream_redis_up", "1 when Redis answered this scrape")
        try:
            if self._store is None:
                self._store = self.config.connect(check=False)
            status = read_status(self._store, self.stream, self.group)
        except StoreError as err:
            _LOG.debug("metrics scrape could not read Redis: %s", err)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        g = status.group
        if g.lag is not None:
            yield GaugeMetricFamily("uic_stream_lag_entries",
                                    "stream entries not yet delivered to the group", value=g.lag)
        yield GaugeMetricFamily("uic_stream_pending_entries",
                                "entries delivered to the group, not yet acknowledged",
                                value=g.pending)
        yield GaugeMetricFamily("uic_stream_oldest_pending_seconds",
                                "time since the oldest pending entry was delivered",
                                value=(g.oldest_pending_idle_ms or 0) / 1000.0)
        yield GaugeMetricFamily("uic_stream_dead_letter_entries",
                                "entries in the dead-letter stream", value=status.dead_letters)


def serve(port: int, config: StoreConfig, stream: str, group: str):
    """Serve the metrics on http://127.0.0.1:<port>/metrics (any path); returns a function
    that stops serving."""
    gauges = _GroupGauges(config, stream, group)
    REGISTRY.register(gauges)
    try:
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=REGISTRY)
    except OSError:
        REGISTRY.unregister(gauges)
        raise

    def stop() -> None:
        server.shutdown()
        server.server_close()
        REGISTRY.unregister(gauges)

    return stop
