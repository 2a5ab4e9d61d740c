"""How the stream job is doing, read from Redis alone (no access to the job needed).

    python -m beam_jobs.status --redis_url redis://127.0.0.1:6390/0 [--stream uic:events]
        [--group uic-stream]

prints the group's lag (entries not yet delivered), its pending entries (delivered, not yet
acknowledged) and how long the oldest has waited, the dead letters, each consumer, and the
active version of each sequence model. `live_metrics` exports the same numbers to Prometheus.
Exit status 0, or 1 when Redis cannot be read (the message says why).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from beam_jobs import DEAD_LETTER_SUFFIX, DEFAULT_STREAM, common
from uic import contract
from uic.store import (
    DEFAULT_NAMESPACE,
    InterestStore,
    StoreError,
    StreamGroupStatus,
)

DEFAULT_GROUP = "uic-stream"


@dataclasses.dataclass(frozen=True)
class StreamStatus:
    group: StreamGroupStatus
    dead_letters: int  # entries in <stream>:dlq
    active_versions: dict[str, int | None]


def read_status(store: InterestStore, stream: str, group: str) -> StreamStatus:
    return StreamStatus(
        group=store.group_status(stream, group),
        dead_letters=store.stream_length(stream + DEAD_LETTER_SUFFIX),
        active_versions={m: store.get_active_version(m) for m in contract.SEQUENCE_MODELS})


def format_status(status: StreamStatus, stream: str, group: str) -> str:
    g = status.group
    lines = [f"stream {stream}: {g.length} entries"]
    if not g.exists:
        lines.append(f"group {group}: does not exist yet (a stream job creates it on start)")
    else:
        idle = ("" if g.oldest_pending_idle_ms is None
                else f" (oldest waiting {g.oldest_pending_idle_ms / 1000:.1f} s)")
        lines += [f"group {group}: last delivered {g.last_delivered_id}",
                  f"  lag        {'unknown' if g.lag is None else g.lag}",
                  f"  pending    {g.pending}{idle}"]
        for name, (pending, idle_ms) in sorted(g.consumers.items()):
            lines.append(f"  consumer {name}: {pending} pending, idle {idle_ms / 1000:.1f} s")
    lines.append(f"dead letters {status.dead_letters} (in {stream}{DEAD_LETTER_SUFFIX})")
    for model, version in status.active_versions.items():
        lines.append(f"active {model}: {'none' if version is None else f'v{version}'}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # '--redis_password X' must not be taken for --redis_password_env
        prog="python -m beam_jobs.status",
        description="Lag, pending entries, dead letters and consumers of the stream job's "
                    "consumer group, and the active model versions, read from Redis.")
    common.add_store_args(parser)
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                        help="store key prefix (default: %(default)s)")
    parser.add_argument("--stream", default=DEFAULT_STREAM, help="default: %(default)s")
    parser.add_argument("--group", default=DEFAULT_GROUP, help="default: %(default)s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = common.store_config(args)
    try:
        status = read_status(config.connect(), args.stream, args.group)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_status(status, args.stream, args.group))
    return 0


if __name__ == "__main__":
    sys.exit(main())
