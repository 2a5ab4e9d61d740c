"""Every Beam metric the jobs report, declared in one place.

The DoFns increment these module-level objects (a Beam counter resolves the running bundle's
metrics container when it is incremented, so declaring them once here is safe on any
runner). `totals` reads one namespace back from a finished pipeline for the CLI summaries;
docs/beam_jobs.md lists what each counter means.
"""

from __future__ import annotations

import logging

from apache_beam.metrics import Metrics

_LOG = logging.getLogger(__name__)

BACKFILL = "backfill"
STREAM = "stream"


class Backfill:
    """Counters of `beam_jobs.backfill` (namespace ``backfill``)."""

    events_read = Metrics.counter(BACKFILL, "events_read")  # valid records read from files
    rejected = Metrics.counter(BACKFILL, "rejected")  # malformed records (dead-letter file)
    after_cutoff = Metrics.counter(BACKFILL, "after_cutoff")  # newer than --cutoff_ts
    users = Metrics.counter(BACKFILL, "users")
    events = Metrics.counter(BACKFILL, "events")  # distinct events in the histories
    duplicates = Metrics.counter(BACKFILL, "duplicates")  # the same event twice in the logs
    users_truncated = Metrics.counter(BACKFILL, "users_truncated")  # cut to --max_history
    history_length = Metrics.distribution(BACKFILL, "history_length")
    states_written = Metrics.counter(BACKFILL, "states_written")
    states_not_newer = Metrics.counter(BACKFILL, "states_not_newer")  # refused by the CAS
    cold_start_written = Metrics.counter(BACKFILL, "cold_start_written")
    behaviours_appended = Metrics.counter(BACKFILL, "behaviours_appended")


class Stream:
    """Counters of `beam_jobs.stream` and of the Redis Stream IO (namespace ``stream``)."""

    # ReadFromRedisStream
    polls = Metrics.counter(STREAM, "polls")
    entries_read = Metrics.counter(STREAM, "entries_read")
    entries_redelivered = Metrics.counter(STREAM, "entries_redelivered")  # pending / claimed
    # UpdateInterestStates
    batches = Metrics.counter(STREAM, "batches")
    entries = Metrics.counter(STREAM, "entries")
    rejected = Metrics.counter(STREAM, "rejected")  # no event field or invalid event
    late = Metrics.counter(STREAM, "late")  # older than the state's watermark, never seen
    duplicates = Metrics.counter(STREAM, "duplicates")  # re-deliveries skipped
    applied = Metrics.counter(STREAM, "applied")  # events folded into states
    users = Metrics.counter(STREAM, "users")
    new_users = Metrics.counter(STREAM, "new_users")  # started from the cold-start state
    states_written = Metrics.counter(STREAM, "states_written")
    cas_retries = Metrics.counter(STREAM, "cas_retries")
    unapplied = Metrics.counter(STREAM, "unapplied")  # lost every CAS race; left pending
    # AckRedisStream
    acked = Metrics.counter(STREAM, "acked")
    dead_lettered = Metrics.counter(STREAM, "dead_lettered")
    entry_to_ack_ms = Metrics.distribution(STREAM, "entry_to_ack_ms")  # XADD -> XACK
    # WriteToRedisStream
    entries_written = Metrics.counter(STREAM, "entries_written")


def totals(result, namespace: str) -> dict[str, int]:
    """Committed (else attempted) counter values of one namespace of a finished pipeline."""
    out: dict[str, int] = {}
    try:
        counters = result.metrics().query()["counters"]
    except Exception as err:  # some runners do not report metrics
        _LOG.warning("could not query metrics: %s", err)
        return out
    for counter in counters:
        if counter.key.metric.namespace != namespace:
            continue
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out
