"""Apache Beam jobs that keep the per-user interest states in Redis (docs/beam_jobs.md).

* `beam_jobs.backfill` - batch: warm up / rebuild every user's state from behaviour logs
  with the exported `tower` (RunInference), point-in-time rebuilds with `--cutoff_ts`.
* `beam_jobs.stream`   - streaming: read behaviour events from a Redis Stream (or Pub/Sub,
  Kafka), fold the new events into the stored states with the exported `step`, ack after
  the write.
* `beam_jobs.produce`  - push events into the Redis Stream at a chosen rate.
* `beam_jobs.rollout`  - backfill version v+1 while v serves, then flip the active pointer.

Shared parts: `redis_streams` (the Redis Streams Beam IO), `updater` (folding events into
states with `step`), `transforms` (the backfill's building blocks), `model_handler`
(RunInference for the exports), `metrics` (every counter), `common` (CLI options),
`supervision` (surviving Redis outages, SIGTERM drain), `live_metrics` (Prometheus) and
`status` (``python -m beam_jobs.status``: lag, pending entries, dead letters).
Every Redis access goes through `uic.store.InterestStore`. docs/beam_jobs.md explains the
idempotency design and how to run on Flink, Spark or Dataflow.
"""

DEFAULT_STREAM = "uic:events"
"""Redis Stream the producer writes and the stream job reads when --stream is not given."""

DEAD_LETTER_SUFFIX = ":dlq"
"""The stream job's dead letters of stream S go to the stream S + this suffix."""

EVENT_FIELD = "event"
"""Stream entry field that holds the Event JSON (`uic.events.Event.to_json`)."""
