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
    states_not_newer = Metrics.counter(BACKFILL, "states_not_newer")  # already as new
    states_merged = Metrics.counter(BACKFILL, "states_merged")  # rebuilt over log (union)
    cas_conflicts = Metrics.counter(BACKFILL, "cas_conflicts")  # another writer got in between
    states_unapplied = Metrics.counter(BACKFILL, "states_unapplied")  # lost every race
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
    rejected = Metrics.counter(STREAM, "rejected")  # no event field, or not a valid event
    future = Metrics.counter(STREAM, "future")  # event time beyond now + --max_future_skew_ms
    late = Metrics.counter(STREAM, "late")  # below the watermark by more than the lateness
    undecidable = Metrics.counter(STREAM, "undecidable")  # below the watermark, no log to decide
    update_errors = Metrics.counter(STREAM, "update_errors")  # events whose update raised
    duplicates = Metrics.counter(STREAM, "duplicates")  # already folded: re-deliveries skipped
    applied = Metrics.counter(STREAM, "applied")  # events folded by a write (step or rebuild)
    late_applied = Metrics.counter(STREAM, "late_applied")  # late events folded by a rebuild
    rebuilds = Metrics.counter(STREAM, "rebuilds")  # users rebuilt from the behaviour log
    corrupt_states = Metrics.counter(STREAM, "corrupt_states")  # dead-lettered and rebuilt
    users = Metrics.counter(STREAM, "users")
    new_users = Metrics.counter(STREAM, "new_users")  # started from the cold-start state
    states_written = Metrics.counter(STREAM, "states_written")
    cas_conflicts = Metrics.counter(STREAM, "cas_conflicts")  # writes refused: re-read, retried
    unapplied = Metrics.counter(STREAM, "unapplied")  # lost every CAS race; left pending
    # AckRedisStream
    acked = Metrics.counter(STREAM, "acked")
    dead_lettered = Metrics.counter(STREAM, "dead_lettered")
    entry_to_ack_ms = Metrics.distribution(STREAM, "entry_to_ack_ms")  # XADD -> XACK
    # beam_jobs.supervision
    reconnects = Metrics.counter(STREAM, "reconnects")  # Redis outages survived
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
