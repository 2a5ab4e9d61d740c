"""Push behaviour events into a Redis Stream at a chosen rate (the stream job's input).

    python -m beam_jobs.produce --events data/demo/events.jsonl --rate 100 \
        --redis_url redis://127.0.0.1:6390/0 [--stream uic:events] [--limit 5000]
    python -m beam_jobs.produce --synthetic 10000 --users 500 --rate 1000 ...

Each entry is ``XADD <stream> * event <Event JSON>``, written through the interest store
(`InterestStore.add_to_stream`); `beam_jobs.redis_streams.WriteToRedisStream` is the same
write as a Beam transform. Lines of a JSONL file are sent as
they are, malformed ones included: validating is the stream job's work, and it dead-letters
them to `<stream>:dlq`. CSV files (Taobao format) are converted with the project's reader.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

from beam_jobs import DEFAULT_STREAM, EVENT_FIELD, common
from uic.store import InterestStore, StoreError, redact_url


def file_payloads(path: str) -> Iterator[str]:
    """Payloads of an events file: JSONL lines as-is, CSV rows converted to Event JSON."""
    if path.endswith(".csv"):
        from uic.event_files import read_events

        for event in read_events(path):
            yield event.to_json()
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if line:
                yield line


def synthetic_payloads(count: int, *, users: int, items: int, categories: int, seed: int,
                       start_ms: int | None = None) -> Iterator[str]:
    """`count` random but valid events, times increasing, unique ids (for load tests)."""
    import numpy as np

    from uic.events import BEHAVIOR_TYPES, Event

    rng = np.random.default_rng(seed)
    t0 = int(time.time() * 1000) if start_ms is None else start_ms
    for i in range(count):
        item = int(rng.integers(1, items + 1))
        yield Event(user_id=int(rng.integers(1, users + 1)), item_id=item,
                    category_id=1 + item % categories,
                    behavior_type=BEHAVIOR_TYPES[int(rng.integers(0, len(BEHAVIOR_TYPES)))],
                    event_time_ms=t0 + i, event_id=f"syn-{seed}-{i}").to_json()


def produce(store: InterestStore, stream: str, payloads: Iterable[str | bytes], *,
            rate: float = 0.0, total: int | None = None, maxlen: int | None = None,
            progress: bool = True, on_sent=None) -> dict[str, float]:
    """XADD every payload to `stream`, paced to `rate` events/s (0 = as fast as possible).

    Sends in small pipelined groups; `on_sent(n_sent_so_far, wall_time)` is called after each
    group (the benchmark uses it). Returns {"sent", "seconds", "rate"}.
    """
    from tqdm import tqdm

    if rate < 0:
        raise ValueError(f"rate must be >= 0 events/s, got {rate}")
    bar = tqdm(total=total, unit="ev", disable=not progress, desc=f"XADD {stream}")
    sent = 0
    started = time.perf_counter()
    group_size = 256 if rate <= 0 else max(1, min(256, int(rate / 100)))
    it = iter(payloads)
    try:
        while True:
            group = list(itertools.islice(it, group_size))
            if not group:
                break
            if rate > 0:  # wait until this group is due
                due = started + (sent + len(group)) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            store.add_to_stream(stream, ({EVENT_FIELD: p} for p in group), maxlen=maxlen)
            sent += len(group)
            bar.update(len(group))
            if on_sent is not None:
                on_sent(sent, time.time())
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    return {"sent": sent, "seconds": seconds, "rate": sent / seconds if seconds > 0 else 0.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # '--redis_password X' must not be taken for --redis_password_env
        prog="python -m beam_jobs.produce",
        description="Push behaviour events into a Redis Stream (XADD <stream> * event <JSON>) "
                    "at a chosen rate, for the stream job.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE", help="events JSONL (sent line by line) or "
                                                         "Taobao CSV")
    source.add_argument("--synthetic", type=int, metavar="N", help="send N random valid events")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="events per second, 0 = as fast as possible (default: %(default)s)")
    common.add_store_args(parser)
    parser.add_argument("--stream", default=DEFAULT_STREAM, help="default: %(default)s")
    parser.add_argument("--limit", type=int, default=None, help="send at most this many events")
    parser.add_argument("--maxlen", type=int, default=None,
                        help="trim the stream towards this many entries, but only of entries every "
                             "consumer group has read and acknowledged")
    parser.add_argument("--users", type=int, default=1000, help="--synthetic: user ids 1..N")
    parser.add_argument("--items", type=int, default=50_000, help="--synthetic: item ids 1..N")
    parser.add_argument("--categories", type=int, default=500,
                        help="--synthetic: category ids 1..N")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic: random seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = []
    if args.rate < 0:
        problems.append(f"--rate must be >= 0 events/s, got {args.rate}")
    if args.maxlen is not None and args.maxlen < 1:
        problems.append(f"--maxlen must be >= 1 entries, got {args.maxlen}")
    if args.limit is not None and args.limit < 1:
        problems.append(f"--limit must be >= 1, got {args.limit}")
    if args.synthetic is not None and args.synthetic < 1:
        problems.append(f"--synthetic must be >= 1 events, got {args.synthetic}")
    for name in ("users", "items", "categories"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.events is not None:
        try:
            open(args.events, "rb").close()
        except OSError as err:
            problems.append(f"cannot read --events {args.events}: {err.strerror}; "
                            "generate the demo data with `make data`")
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    try:
        store = common.store_config(args).connect()
    except StoreError as err:
        print(f"error: {err} (or pass --redis_url)", file=sys.stderr)
        return 2
    if args.events is not None:
        payloads: Iterable[str] = file_payloads(args.events)
        total = None
    else:
        payloads = synthetic_payloads(args.synthetic, users=args.users, items=args.items,
                                      categories=args.categories, seed=args.seed)
        total = args.synthetic
    if args.limit is not None:
        payloads = itertools.islice(payloads, args.limit)
        total = min(total, args.limit) if total else args.limit
    stats = produce(store, args.stream, payloads, rate=args.rate, total=total,
                    maxlen=args.maxlen, progress=not args.quiet)
    print(f"sent {stats['sent']:,} events to {args.stream} in {stats['seconds']:.1f} s "
          f"({stats['rate']:,.0f} ev/s) at {redact_url(args.redis_url)}; stream length now "
          f"{store.stream_length(args.stream):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
