"""Beam jobs benchmark: backfill throughput, and stream throughput and freshness at parallelism.

* backfill: users/s and events/s of `beam_jobs.backfill` (DirectRunner engine, in process,
  pipeline start-up and model load included) on synthetic histories (DIEN);
* stream grid: for MIMN and DIEN, 1, 2 and 4 workers (that many `beam_jobs.stream`
  processes side by side in one consumer group, each its own consumer name) at 1,000 and
  5,000 events/s offered. Events go to 10,000 users drawn by a Zipf law (exponent 1.1: a few
  heavy users, many light ones), are XADDed in paced groups every 10 ms (scheduled send
  times), and every event is followed until a state including it is readable.

Per cell: offered, sent and applied events/s (applied = events seen readable per second
from the first send to the last one readable); events sent, applied (from the states'
`events_applied` in Redis), dead-lettered, not delivered (still in the stream when the cell
ended: the workers could not keep up, and the benchmark drops them so the next cell starts
on an empty group), pending at the end (delivered, not applied: entries whose events lost
every compare-and-set race, left for redelivery after `--claim_idle_ms`) and unaccounted
(sent - applied - dead-lettered - not delivered - pending at the end: 0 when none is lost
or applied twice, negative when some were applied twice); freshness
p50/p99/max over every event sent (one never readable counts as infinite, so p99 is None
when more than 1 % are missing); the CAS conflicts the workers met (each one a re-read and
a retried write, from their `--metrics_port` counters). A cell sends for at most 1.25 times
its window (a sender that falls behind does not stretch it), then waits up to
`drain_seconds` for its events. At the end of each model the workers' own Beam counters
(`unapplied`, `entries_redelivered`, `late_applied`, `rebuilds`, ...) are summed into one
`beam_stream_jobs` record.

Freshness of an event = the write time of the first state of its user seen to include it
minus the moment its XADD returned. A watcher thread reads the state headers (GETRANGE, one
pipelined round trip) of the users with events outstanding longest (up to 1,000 per read),
continuously; a state includes the user's k-th event of the cell when its `events_applied`
has grown by k and its watermark is at or past that event. (When workers fold one user's
events out of order, a late one by a rebuild, this credits the user's earlier events first:
times may swap among one user's events, the count never.) The write time is stamped by the writer just before its
compare-and-set round trip; when the watcher missed an intermediate state, the later state's
write time is used, which can only overstate freshness.

Each cell uses users of its own, so one cell's events cannot be counted by another. Before
the first cell of a worker count, events are fed until every worker has applied some (models
loaded and run). Everything
(redis-server, exports, data, the stream jobs) is started and stopped here.
`python -m bench.beam [--quick]`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BACKFILL_MODEL = "dien"
GROUP = "bench"
JOB_COUNTERS = ("applied", "cas_conflicts", "unapplied", "entries_redelivered", "late_applied",
                "rebuilds", "duplicates", "late", "dead_lettered", "update_errors")


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """What the stream grid runs. `workers` are reached by adding processes to the group in
    that order (1, then 2, then 4), each count run at every rate."""

    models: tuple[str, ...] = ("mimn", "dien")
    workers: tuple[int, ...] = (1, 2, 4)
    rates: tuple[int, ...] = (1000, 5000)
    seconds: float = 10.0  # send window of a cell
    users: int = 10_000
    zipf_exponent: float = 1.1
    drain_seconds: float = 5.0  # how long a cell waits for its last events after sending
    tiny_models: bool = False

    @classmethod
    def quick(cls) -> GridSettings:
        return cls(workers=(1, 2), seconds=2.0, users=2_000, drain_seconds=3.0,
                   tiny_models=True)


# ---- exports and backfill ----------------------------------------------------------------
def _export(root: Path, models, tiny: bool) -> None:
    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    for model in models:
        config = ModelConfig.tiny() if tiny else ModelConfig()
        export_model(model, root, 1, config=config, seed=1, parts=("tower", "step"))


def _bench_backfill(url: str, exports: Path, work: Path, users: int, per_user: int) -> dict:
    from beam_jobs.backfill import BackfillOptions, run_backfill
    from beam_jobs.produce import synthetic_payloads
    from uic.store import StoreConfig

    path = work / "events.jsonl"
    with path.open("w") as f:
        for line in synthetic_payloads(users * per_user, users=users, items=50_000,
                                       categories=500, seed=3, start_ms=1_500_000_000_000):
            f.write(line + "\n")
    res = run_backfill(BackfillOptions(model=BACKFILL_MODEL, events=[str(path)],
                                       store=StoreConfig(url=url), saved_models=str(exports),
                                       version=1, dead_letter=str(work / "dead.jsonl")))
    n_users, n_events = res.totals.get("users", 0), res.totals.get("events", 0)
    return {"bench": "beam_backfill", "model": BACKFILL_MODEL, "users": n_users,
            "events": n_events, "seconds": round(res.seconds, 2),
            "users_per_s": round(n_users / res.seconds, 1),
            "events_per_s": round(n_events / res.seconds, 1)}


# ---- the events of a cell ----------------------------------------------------------------
def zipf_users(n_events: int, users: int, exponent: float, seed: int) -> np.ndarray:
    """`n_events` user indices in [0, users): P(rank k) ~ k^-exponent, ranks shuffled over
    the indices so the heavy users are not simply the lowest ids."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, users + 1, dtype=np.float64) ** -exponent
    ranks = rng.choice(users, size=n_events, p=weights / weights.sum())
    return rng.permutation(users)[ranks]


@dataclasses.dataclass
class CellEvents:
    """The events of one cell, in send order: user, per-user rank (1 = the user's first
    event of the cell) and watermark key (time, id) of each, and the payloads."""

    users: np.ndarray
    ranks: np.ndarray
    keys: list[tuple[int, str]]
    payloads: list[str]


def cell_events(n: int, rate: int, *, first_user: int, users: int, exponent: float,
                tag: str, seed: int) -> CellEvents:
    """Zipf-distributed events whose times are their scheduled send times (one user's events
    are therefore in history order), ids unique and sortable."""
    from uic.events import Event

    user_ids = first_user + zipf_users(n, users, exponent, seed)
    seen: collections.Counter = collections.Counter()
    ranks = np.empty(n, dtype=np.int64)
    for i, u in enumerate(user_ids.tolist()):
        seen[u] += 1
        ranks[i] = seen[u]
    t0 = int(time.time() * 1000)
    keys, payloads = [], []
    for i, u in enumerate(user_ids.tolist()):
        key = (t0 + i * 1000 // rate, f"{tag}-{i:08d}")
        keys.append(key)
        payloads.append(Event(u, 1 + (i * 7919) % 50_000, 1 + i % 97, "pv", *key).to_json())
    return CellEvents(user_ids, ranks, keys, payloads)


# ---- following the states ----------------------------------------------------------------
_HEADER_READ = 128  # bytes of a state value read by the watcher: header and the event id


def read_headers(store, model: str, user_ids) -> list[tuple[int, int, str, int] | None]:
    """(events_applied, watermark time, watermark id, write time) of each user's state, or
    None, read with one pipelined GETRANGE per user (not the whole state)."""
    from uic import codec

    pipe = store.client.pipeline(transaction=False)
    for u in user_ids:
        pipe.getrange(store.state_key(model, 1, int(u)), 0, _HEADER_READ - 1)
    out = []
    for raw in pipe.execute():
        if not raw or len(raw) < codec.HEADER_SIZE:
            out.append(None)
            continue
        _, _, _, _, id_len, _, applied, last_t, write_t = codec.HEADER.unpack_from(raw)
        last_id = bytes(raw[codec.HEADER_SIZE:codec.HEADER_SIZE + id_len]).decode()
        out.append((applied, last_t, last_id, write_t))
    return out


class FreshnessWatch(threading.Thread):
    """Follows the events of a cell as they are sent until a state including each one is
    readable; `readable_ms[i]` is then that state's write time (NaN while not seen)."""

    MAX_USERS_PER_POLL = 1000  # bounds one poll's cost when the job falls behind

    def __init__(self, store, model: str, events: CellEvents):
        super().__init__(name="freshness-watch", daemon=True)
        self.store, self.model, self.events = store, model, events
        self.sent = 0  # events whose XADD has returned (set by the sending thread)
        self.readable_ms = np.full(len(events.users), np.nan)
        self.stop_at: float | None = None  # monotonic deadline set once sending is done
        self._outstanding: dict[int, collections.deque] = {}  # user -> event indices
        self._registered = 0  # events taken into _outstanding

    def finish(self, deadline: float) -> None:
        """Sending is over: stop once every event sent is settled or at `deadline`."""
        self.stop_at = deadline

    def run(self) -> None:
        while True:
            started = time.monotonic()
            busy = self.poll_once()
            if self.stop_at is not None and (
                    time.monotonic() > self.stop_at
                    or not busy and self._registered == self.sent):
                return
            # at most about half of this process's time: the sender needs the rest
            time.sleep(max(0.002, time.monotonic() - started))

    def poll_once(self) -> bool:
        """Take in the events sent so far, read the headers of the users with events
        outstanding longest (at most `MAX_USERS_PER_POLL`) and settle what they include;
        False when nothing was outstanding."""
        sent = self.sent
        for i in range(self._registered, sent):
            self._outstanding.setdefault(int(self.events.users[i]), collections.deque()).append(i)
        self._registered = sent
        if not self._outstanding:
            return False
        # dict order: a user settled and outstanding again goes to the end
        users = list(itertools.islice(self._outstanding, self.MAX_USERS_PER_POLL))
        for u, header in zip(users, read_headers(self.store, self.model, users), strict=True):
            if header is not None:
                self._resolve(u, header)
        return True

    def _resolve(self, user: int, header) -> None:
        applied, last_t, last_id, write_t = header
        queue = self._outstanding[user]
        while queue:
            i = queue[0]
            if applied < self.events.ranks[i] or (last_t, last_id) < self.events.keys[i]:
                break
            self.readable_ms[i] = write_t
            queue.popleft()
        if not queue:
            del self._outstanding[user]


def freshness_percentiles(fresh_ms: np.ndarray) -> dict:
    """p50/p99/max over every event; NaN (never readable) counts as infinitely late and a
    percentile that lands on one is None."""
    values = np.where(np.isnan(fresh_ms), np.inf, fresh_ms)
    out = {}
    for name, q in (("p50_ms", 50), ("p99_ms", 99), ("max_ms", 100)):
        v = float(np.percentile(values, q, method="higher")) if len(values) else float("nan")
        out[name] = round(v, 1) if np.isfinite(v) else None
    return out


# ---- the workers -------------------------------------------------------------------------
class StreamWorkers:
    """Stream job processes of one model in one consumer group, added one by one; each
    serves its Prometheus counters (scraped per cell) and prints its Beam counters at exit."""

    def __init__(self, model: str, exports: Path, url: str, stream: str, logs: Path):
        self.model, self.exports, self.url, self.stream, self.logs = (model, exports, url,
                                                                      stream, logs)
        self.jobs: list = []
        self.ports: list[int] = []

    def grow_to(self, count: int, store) -> None:
        """Start workers until there are `count`; return once each has joined the group."""
        from devkit.ports import free_port
        from devkit.processes import ChildProcess

        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
        new = []
        while len(self.jobs) < count:
            name = f"worker-{len(self.jobs) + 1}"
            port = free_port()
            argv = [sys.executable, "-m", "beam_jobs.stream", "--model", self.model,
                    "--version", "1", "--saved_models", str(self.exports),
                    "--redis_url", self.url, "--stream", self.stream, "--group", GROUP,
                    "--consumer", name, "--start_id", "$", "--metrics_port", str(port),
                    "--stop_after_seconds", "3600"]
            job = ChildProcess(argv, name=f"{self.model} stream {name}", cwd=REPO, env=env,
                               log_path=self.logs / f"{self.model}-{name}.log").start()
            self.jobs.append(job)
            self.ports.append(port)
            new.append((job, name))
        for job, name in new:
            job.wait_until(lambda n=name: n in store.group_status(self.stream, GROUP).consumers,
                           f"consumer {name} in group {GROUP}", timeout=180)

    def scrape(self) -> list[dict[str, float]]:
        """Each worker's Prometheus counters (uic_stream_<name>_total), by name; {} for a
        worker that did not answer."""
        out = []
        for port in self.ports:
            counters: dict[str, float] = {}
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
            for m in re.finditer(r"^uic_stream_(\w+)_total (\S+)$", text, re.M):
                counters[m.group(1)] = float(m.group(2))
            out.append(counters)
        return out

    def total(self, name: str) -> int:
        """A counter summed over the workers."""
        return int(sum(c.get(name, 0) for c in self.scrape()))

    def warm_up(self, store, first_user: int, timeout: float = 300.0) -> int:
        """Feed events to new users from `first_user` on until every worker has applied
        some (its models are loaded and have run), then wait for the group to drain.
        Returns the next unused user id."""
        from beam_jobs.produce import produce
        from uic.events import Event

        deadline = time.monotonic() + timeout
        user = first_user
        while not all(c.get("applied", 0) > 0 for c in self.scrape()):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not every {self.model} stream worker applied an event within "
                    f"{timeout:g} s; see their logs in {self.logs}")
            now = int(time.time() * 1000)
            payloads = [Event(user + i, 1 + i, 1 + i, "pv", now, f"warm-{user + i}").to_json()
                        for i in range(20)]
            produce(store, self.stream, payloads, progress=False)
            user += 20
            time.sleep(0.2)
        _wait_drained(store, self.stream, deadline)
        return user

    def stop(self) -> dict[str, int]:
        """SIGTERM every worker (each drains its batch in hand), all at once, and sum the
        Beam counters they print at exit."""
        with ThreadPoolExecutor(max(1, len(self.jobs))) as pool:
            list(pool.map(lambda job: job.stop(grace_s=30), self.jobs))
        totals: dict[str, int] = collections.Counter()
        for job in self.jobs:
            totals.update(exit_counters(job.log_path.read_text(errors="replace")))
        return dict(totals)


def exit_counters(log: str) -> dict[str, int]:
    """The counters a stream job prints after "stream job stopped after ... s"."""
    out: dict[str, int] = {}
    _, found, tail = log.rpartition("stream job stopped after")
    if not found:
        return out
    for m in re.finditer(r"^\s+(\w+)\s+([\d,]+)\s*$", tail, re.M):
        out[m.group(1)] = int(m.group(2).replace(",", ""))
    return out


# ---- one cell ----------------------------------------------------------------------------
def _backlog(store, stream: str) -> int:
    """Entries of the group not yet delivered (lag) or not yet acknowledged (pending)."""
    g = store.group_status(stream, GROUP)
    return int(g.lag or 0) + int(g.pending)


def _wait_drained(store, stream: str, deadline: float) -> int:
    """Wait until the group has no backlog or the monotonic `deadline`; the backlog left."""
    while (left := _backlog(store, stream)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _last_entry_id(store, stream: str) -> str:
    """The id of the stream's newest entry ("0-0" when empty)."""
    newest = store.client.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def _pending_after(store, stream: str, entry_id: str) -> int:
    """Entries after `entry_id` delivered to the group and not acknowledged."""
    return len(store.client.xpending_range(stream, GROUP, f"({entry_id}", "+", 10**7))


def _drop_undelivered(store, stream: str) -> int:
    """Take every entry not yet delivered to a worker away from the group (read and
    acknowledged by a consumer of the benchmark's own), so that a cell the workers could not
    keep up with does not spill into the next one. Returns how many were dropped."""
    entries = store.read_new(stream, GROUP, "bench-dropper", count=10**7)
    ids = [e.entry_id for e in entries]
    for i in range(0, len(ids), 10_000):
        store.ack(stream, GROUP, ids[i:i + 10_000])
    return len(ids)


def _until(payloads, deadline: float):
    """The payloads, until the monotonic `deadline` (a sender that falls behind its
    schedule does not stretch the cell)."""
    for payload in payloads:
        if time.monotonic() > deadline:
            return
        yield payload


def run_cell(store, workers: StreamWorkers, events: CellEvents, rate: int,
             drain_seconds: float) -> dict:
    """Send `events` at `rate`, follow them to readable states, count every one sent.

    Sending stops at 1.25 times the scheduled window; then the cell waits up to
    `drain_seconds` for the events to become readable and the group to drain. Events still
    undelivered then are dropped (`not_delivered`) and the batches in the workers' hands are
    let finish, so that the next cell starts on an empty group."""
    from beam_jobs.produce import produce
    from beam_jobs.redis_streams import dead_letter_stream

    model, stream = workers.model, workers.stream
    n = len(events.users)
    dlq = dead_letter_stream(stream)
    dead_before = store.stream_length(dlq)
    conflicts_before = workers.total("cas_conflicts")
    before_cell = _last_entry_id(store, stream)
    sent_at = np.full(n, np.nan)
    watch = FreshnessWatch(store, model, events)

    def on_sent(count: int, wall: float) -> None:
        sent_at[watch.sent:count] = wall * 1000.0
        watch.sent = count

    watch.start()
    send_deadline = time.monotonic() + 1.25 * n / rate
    stats = produce(store, stream, _until(events.payloads, send_deadline), rate=rate,
                    total=n, progress=False, on_sent=on_sent)
    deadline = time.monotonic() + drain_seconds
    watch.finish(deadline)
    watch.join()
    _wait_drained(store, stream, deadline)
    dropped = _drop_undelivered(store, stream)
    # let the batches in the workers' hands finish; what stays pending lost its CAS races
    _wait_drained(store, stream, time.monotonic() + 5.0)
    pending = _pending_after(store, stream, before_cell)
    conflicts = workers.total("cas_conflicts") - conflicts_before
    sent = int(stats["sent"])
    users = np.unique(events.users[:sent])
    applied = sum(h[0] for h in read_headers(store, model, users) if h is not None)
    dead = store.stream_length(dlq) - dead_before
    fresh = (watch.readable_ms - sent_at)[:sent]
    readable = int(np.count_nonzero(~np.isnan(fresh)))
    span_s = (np.nanmax(watch.readable_ms) - sent_at[0]) / 1000.0 if readable else 0.0
    return {"bench": "beam_stream", "model": model, "workers": len(workers.jobs),
            "offered_eps": rate, "sent_eps": round(stats["rate"], 1),
            "applied_eps": round(float(readable / span_s), 1) if span_s > 0 else None,
            "users": int(len(users)), "events": sent, "applied": int(applied),
            "dead_lettered": int(dead), "not_delivered": dropped, "pending_at_end": pending,
            "unaccounted": int(sent - applied - dead - dropped - pending),
            "readable": readable, **freshness_percentiles(fresh),
            "cas_conflicts": conflicts}


def run_grid(url: str, exports: Path, logs: Path, settings: GridSettings) -> list[dict]:
    """Every (model, workers, rate) cell of the stream grid, plus one job-counter record per
    model."""
    from uic.store import connect as store_connect

    store = store_connect(url)
    records: list[dict] = []
    next_user = 10**6
    try:
        for model in settings.models:
            stream = f"bench:{model}"
            store.create_group(stream, GROUP, "$")
            workers = StreamWorkers(model, exports, url, stream, logs)
            try:
                for count in settings.workers:
                    t0 = time.perf_counter()
                    workers.grow_to(count, store)
                    next_user = workers.warm_up(store, next_user)
                    print(f"  {model}: {count} worker(s) in the group ({time.perf_counter() - t0:.0f}"
                          " s to start and warm up)", flush=True)
                    for rate in settings.rates:
                        events = cell_events(int(rate * settings.seconds), rate,
                                             first_user=next_user, users=settings.users,
                                             exponent=settings.zipf_exponent,
                                             tag=f"{model}{count}w{rate}", seed=rate + count)
                        next_user += settings.users
                        records.append(run_cell(store, workers, events, rate,
                                                settings.drain_seconds))
                        _print_cell(records[-1])
            finally:
                totals = workers.stop()
            records.append({"bench": "beam_stream_jobs", "model": model,
                            "workers": max(settings.workers),
                            **{k: totals.get(k, 0) for k in JOB_COUNTERS}})
    finally:
        store.client.close()
    return records


# ---- the whole benchmark -----------------------------------------------------------------
def run(quick: bool = False, settings: GridSettings | None = None,
        backfill: bool = True) -> list[dict]:
    from devkit.redis_server import EmbeddedRedis

    settings = settings or (GridSettings.quick() if quick else GridSettings())
    records: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_beam_") as tmp, EmbeddedRedis() as server:
        work = Path(tmp)
        exports = work / "exports"
        models = tuple(dict.fromkeys(((BACKFILL_MODEL,) if backfill else ()) + settings.models))
        _export(exports, models, settings.tiny_models)
        print(f"exports of {', '.join(models)}: {time.perf_counter() - started:.0f} s", flush=True)
        if backfill:
            users, per_user = (300, 20) if quick else (5000, 50)
            records.append(_bench_backfill(server.url, exports, work, users, per_user))
        print("\nStream grid (Zipf users, workers = stream job processes in one group)")
        records += run_grid(server.url, exports, work, settings)
    _print(records, time.perf_counter() - started)
    return records


def _print_cell(r: dict) -> None:
    p99 = f"{r['p99_ms']:>7.1f}" if r["p99_ms"] is not None else "    n/a"
    print(f"  {r['model']:<5} {r['workers']} w {r['offered_eps']:>5} ev/s offered  "
          f"sent {r['sent_eps']:>7,.0f}  applied {r['applied_eps'] or 0:>7,.0f} ev/s  "
          f"p50 {r['p50_ms'] if r['p50_ms'] is not None else float('nan'):>7.1f} ms  "
          f"p99 {p99} ms  {r['applied']:,}/{r['events']:,} applied, {r['not_delivered']:,} not delivered, "
          f"{r['pending_at_end']} pending, {r['unaccounted']} unaccounted, "
          f"{r['cas_conflicts']} CAS conflicts", flush=True)


def _print(records: list[dict], seconds: float) -> None:
    print(f"\nBeam jobs (DirectRunner engine, 2 cores shared; {seconds:.0f} s in all)")
    for r in records:
        if r["bench"] == "beam_backfill":
            print(f"  backfill  {r['users']:>7,} users {r['events']:>9,} events  "
                  f"{r['seconds']:>6.1f} s  {r['users_per_s']:>9,.0f} users/s  "
                  f"{r['events_per_s']:>10,.0f} events/s")
        elif r["bench"] == "beam_stream":
            _print_cell(r)
        else:
            print(f"  {r['model']:<5} job counters: "
                  + ", ".join(f"{k} {r[k]:,}" for k in JOB_COUNTERS))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.beam",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, 1 and 2 workers, 2 s cells (about 2 minutes)")
    run(quick=parser.parse_args(argv).quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
