"""Training samples from a behaviour log (Taobao `UserBehavior.csv` or events JSONL), built
the way the DIEN and MIMN papers build them for Taobao: per user in time order, the last
behaviour is the target; the behaviours before it are its history; a positive keeps the
target item, a negative swaps in a sampled item (with that item's category). A cut at a
quantile of the targets' times splits train from eval. Protocol, choices and the papers'
tables: docs/training_data.md.

    python -m tf_models.data.samples --log UserBehavior.csv --out data/taobao

Writes a data directory the trainer reads unchanged (`python -m tf_models.train --data DIR`):

* ``events.jsonl``: every valid behaviour inside the time window, in (time, event_id)
  order, so the backfill and the stream replay the real log;
* ``impressions.jsonl``: the samples (user, item, category, time = the target's time,
  label), in time order: train first, then eval. The trainer rebuilds each sample's history
  as the user's events strictly before that time, so the target itself is never in it;
* ``samples.json``: the summary (users, samples, dropped lines by reason), the parameters
  and the split, with the ``--eval_fraction`` that makes the trainer hold out exactly the
  eval samples.

Memory is bounded by ``--chunk_lines``, not by the file: the log is read once, and its
events go to two external sorts (sorted runs on disk, merged with heapq.merge): by (user,
time, event_id) to build samples, by (time, event_id) to write events.jsonl. What stays in
memory is an item -> category map and item counts (for 4 M items about 1 GB) and one user's
events at a time.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import heapq
import itertools
import json
import math
import os
import pickle
import shutil
import sys
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from uic.events import FIELDS as EVENT_FIELDS
from uic.events import Impression

BEIJING = dt.timezone(dt.timedelta(hours=8))
TAOBAO_WINDOW = "2017-11-25,2017-12-03"
"""The nine days of the Taobao log (Beijing time, both days included)."""
NEGATIVE_DISTRIBUTIONS = ("uniform", "popularity")
MAX_NEGATIVE_DRAWS = 100
SUMMARY_FILE = "samples.json"
_SHOW_ERRORS = 5
_PICKLE_BATCH = 4096


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    max_history: int = 200  # MIMN's Taobao script; the trainer's --max_len should match
    targets_per_user: int = 1  # the papers: the last behaviour only
    eval_quantile: float = 0.7  # MIMN: users whose last touch is after the 70th percentile
    negatives: str = "uniform"  # MIMN's Taobao script; DIEN's scripts sample by popularity
    popularity_power: float = 1.0  # alpha in count^alpha when negatives == "popularity"
    window_ms: tuple[int, int] | None = None  # [start, end) on event_time_ms; None keeps all
    min_behaviours: int = 2
    seed: int = 0
    chunk_lines: int = 2_000_000

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter and its valid range."""
        checks = [
            ("max_history", self.max_history >= 1, "must be >= 1"),
            ("targets_per_user", self.targets_per_user >= 1, "must be >= 1"),
            ("eval_quantile", 0.0 < self.eval_quantile < 1.0, "must be in (0, 1)"),
            ("negatives", self.negatives in NEGATIVE_DISTRIBUTIONS,
             f"must be one of {', '.join(NEGATIVE_DISTRIBUTIONS)}"),
            ("popularity_power", math.isfinite(self.popularity_power) and self.popularity_power >= 0,
             "must be a finite number >= 0"),
            ("window_ms", self.window_ms is None or self.window_ms[0] < self.window_ms[1],
             "must end after it starts"),
            ("min_behaviours", self.min_behaviours >= 2,
             "must be >= 2 (a target needs at least one behaviour before it)"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("chunk_lines", self.chunk_lines >= 1, "must be >= 1"),
        ]
        for name, ok, hint in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} {hint}")


def parse_window(text: str) -> tuple[int, int] | None:
    """``START,END`` as dates (YYYY-MM-DD, Beijing time, END included) or epoch milliseconds
    (END excluded) -> [start_ms, end_ms); ``none`` -> None (keep every time)."""
    if text.strip().lower() == "none":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ValueError(f"--window must be START,END or none, got {text!r}")
    bounds = []
    for index, part in enumerate(parts):
        if part.isdigit():
            bounds.append(int(part))
            continue
        try:
            day = dt.date.fromisoformat(part)
        except ValueError:
            raise ValueError(f"--window: {part!r} is neither a date (YYYY-MM-DD) nor epoch "
                             "milliseconds") from None
        day += dt.timedelta(days=index)  # the end date is included: stop at the next midnight
        midnight = dt.datetime(day.year, day.month, day.day, tzinfo=BEIJING)
        bounds.append(int(midnight.timestamp()) * 1000)
    if bounds[0] >= bounds[1]:
        raise ValueError(f"--window {text!r} ends before it starts")
    return bounds[0], bounds[1]


def default_window(log: Path) -> str:
    """The Taobao nine days for a CSV log, no window for events JSONL."""
    return TAOBAO_WINDOW if log.name.lower().endswith(".csv") else "none"


class ExternalSort:
    """Tuples sorted in memory `chunk` at a time, each sorted run pickled to disk, then merged
    lazily with heapq.merge: memory holds one chunk (and one batch per run), not the input."""

    def __init__(self, tmp: Path, name: str, chunk: int):
        self.tmp, self.name, self.chunk = tmp, name, chunk
        self.buffer: list[tuple] = []
        self.runs: list[Path] = []
        self.count = 0

    def add(self, record: tuple) -> None:
        self.buffer.append(record)
        self.count += 1
        if len(self.buffer) >= self.chunk:
            self._spill()

    def _spill(self) -> None:
        self.buffer.sort()
        path = self.tmp / f"{self.name}.{len(self.runs):05d}"
        with path.open("wb") as f:
            for start in range(0, len(self.buffer), _PICKLE_BATCH):
                pickle.dump(self.buffer[start:start + _PICKLE_BATCH], f, pickle.HIGHEST_PROTOCOL)
        self.runs.append(path)
        self.buffer = []

    @staticmethod
    def _read_run(path: Path) -> Iterator[tuple]:
        with path.open("rb") as f:
            while True:
                try:
                    batch = pickle.load(f)
                except EOFError:
                    return
                yield from batch

    def sorted(self) -> Iterator[tuple]:
        """All records in order. A single chunk never touches the disk."""
        if not self.runs:
            self.buffer.sort()
            return iter(self.buffer)
        if self.buffer:
            self._spill()
        return heapq.merge(*(self._read_run(p) for p in self.runs))


class NegativeSampler:
    """Draws an (item, category) pair from the log's items, uniformly or by count^power,
    avoiding a given set of items (the target and the history)."""

    def __init__(self, counts: dict[int, int], categories: dict[int, int], negatives: str,
                 power: float):
        self.items = np.fromiter(sorted(counts), np.int64, len(counts))
        self.cates = np.fromiter((categories[i] for i in self.items.tolist()), np.int64, len(counts))
        self.cumulative = None
        if negatives == "popularity":
            weights = np.fromiter((counts[i] for i in self.items.tolist()), np.float64,
                                  len(counts)) ** power
            self.cumulative = np.cumsum(weights)

    def draw(self, rng: np.random.Generator, avoid: set[int]) -> tuple[int, int] | None:
        """A pair whose item is not in `avoid`, or None after MAX_NEGATIVE_DRAWS tries."""
        for _ in range(MAX_NEGATIVE_DRAWS):
            if self.cumulative is None:
                index = int(rng.integers(len(self.items)))
            else:
                index = int(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1],
                                            side="right"))
                index = min(index, len(self.items) - 1)
            item = int(self.items[index])
            if item not in avoid:
                return item, int(self.cates[index])
        return None


@dataclasses.dataclass
class Summary:
    """What happened to every line of the log and every user."""

    lines: int = 0
    events: int = 0  # valid, inside the window: written to events.jsonl
    malformed: int = 0
    outside_window: int = 0
    first_errors: list[str] = dataclasses.field(default_factory=list)
    items: int = 0
    categories: int = 0
    items_with_several_categories: int = 0
    users: int = 0  # users in the window
    users_with_samples: int = 0
    users_too_few_behaviours: int = 0
    events_of_users_too_few_behaviours: int = 0
    targets: int = 0
    targets_without_earlier_behaviour: int = 0  # every other behaviour at the same time
    targets_without_negative: int = 0  # no item outside the history after many draws
    samples_train: int = 0
    samples_eval: int = 0
    users_eval: int = 0
    eval_cut_time_ms: int = 0  # eval = samples whose time is later than this
    sorted_runs: int = 0

    def report(self) -> str:
        rows = [
            ("log lines", self.lines),
            ("  malformed (dropped)", self.malformed),
            ("  outside the window (dropped)", self.outside_window),
            ("  events kept (events.jsonl)", self.events),
            ("items / categories", f"{self.items} / {self.categories}"),
            ("  items seen with several categories", self.items_with_several_categories),
            ("users", self.users),
            ("  with samples", self.users_with_samples),
            ("  too few behaviours (no samples)",
             f"{self.users_too_few_behaviours} users, {self.events_of_users_too_few_behaviours} events"),
            ("targets", self.targets),
            ("  no earlier behaviour (dropped)", self.targets_without_earlier_behaviour),
            ("  no negative found (dropped)", self.targets_without_negative),
            ("samples train", f"{self.samples_train} (positives = negatives)"),
            ("samples eval", f"{self.samples_eval} ({self.users_eval} users)"),
            ("eval cut (time > ms)", self.eval_cut_time_ms),
        ]
        text = "\n".join(f"{name:<40} {value}" for name, value in rows)
        if self.first_errors:
            text += "\nfirst malformed lines:\n  " + "\n  ".join(self.first_errors)
        return text


def _progress(iterable: Iterable, enabled: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, disable=not enabled, mininterval=1.0, **kwargs)


def _read_log(log: Path, config: SampleConfig, by_user: ExternalSort, by_time: ExternalSort,
              summary: Summary, progress: bool) -> tuple[dict[int, int], dict[int, int]]:
    """One pass over the log: count and drop bad lines, feed both sorts, and return the item
    counts and the item -> category map (the first category an item is seen with)."""
    from uic.event_files import read_events_with_errors

    counts: dict[int, int] = {}
    categories: dict[int, int] = {}
    conflicts: set[int] = set()
    users: set[int] = set()
    rows = read_events_with_errors(log)
    for event, error, line_no in _progress(rows, progress, desc="read log", unit=" lines"):
        summary.lines += 1
        if event is None:
            summary.malformed += 1
            if len(summary.first_errors) < _SHOW_ERRORS:
                summary.first_errors.append(f"line {line_no}: {error}")
            continue
        t = event.event_time_ms
        if config.window_ms is not None and not config.window_ms[0] <= t < config.window_ms[1]:
            summary.outside_window += 1
            continue
        summary.events += 1
        item, cate = event.item_id, event.category_id
        counts[item] = counts.get(item, 0) + 1
        known = categories.setdefault(item, cate)
        if known != cate:
            conflicts.add(item)
        users.add(event.user_id)
        by_user.add((event.user_id, t, event.event_id, item, cate))
        by_time.add((t, event.event_id, event.user_id, item, cate, event.behavior_type))
    summary.items = len(counts)
    summary.categories = len(set(categories.values()))
    summary.items_with_several_categories = len(conflicts)
    summary.users = len(users)
    return counts, categories


def _user_samples(user: int, events: list[tuple], config: SampleConfig,
                  sampler: NegativeSampler, summary: Summary) -> list[tuple]:
    """(time, user, order, item, category, label) rows for one user's events sorted by
    (time, event_id): a positive and a negative for each of the last targets_per_user
    behaviours. The history is every behaviour strictly earlier than the target (the rule
    the trainer applies), so the target and same-time behaviours are not in it."""
    if len(events) < config.min_behaviours:
        summary.users_too_few_behaviours += 1
        summary.events_of_users_too_few_behaviours += len(events)
        return []
    times = [e[1] for e in events]
    rng = np.random.default_rng([config.seed, user])
    rows = []
    for index in range(max(0, len(events) - config.targets_per_user), len(events)):
        _, t, _, item, cate = events[index]
        summary.targets += 1
        end = bisect.bisect_left(times, t)
        if end == 0:
            summary.targets_without_earlier_behaviour += 1
            continue
        avoid = {e[3] for e in events[max(0, end - config.max_history):end]}
        avoid.add(item)
        negative = sampler.draw(rng, avoid)
        if negative is None:
            summary.targets_without_negative += 1
            continue
        rows.append((t, user, 2 * index, item, cate, 1))
        rows.append((t, user, 2 * index + 1, negative[0], negative[1], 0))
    if rows:
        summary.users_with_samples += 1
    return rows


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    part = path.with_name(path.name + ".part")
    with part.open("w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(part, path)


def _event_line(row: tuple) -> str:
    t, event_id, user, item, cate, behaviour = row
    values = (user, item, cate, behaviour, t, event_id)
    return json.dumps(dict(zip(EVENT_FIELDS, values, strict=True)), separators=(",", ":")) + "\n"


def _impression_line(row: tuple) -> str:
    t, user, _, item, cate, label = row
    return Impression(user, item, cate, t, label).to_json() + "\n"


def trainer_eval_fraction(train: int, eval_: int) -> float:
    """The trainer's --eval_fraction that holds out exactly the last `eval_` of
    `train + eval_` time-sorted samples (it keeps the first round(n * (1 - f)))."""
    n = train + eval_
    fraction = eval_ / n
    if int(round(n * (1.0 - fraction))) != train:  # cannot happen below 2^52 samples
        raise ArithmeticError(f"no float eval_fraction splits {n} samples at {train}")
    return fraction


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMMARY_FILE).is_file():
        raise ValueError(f"--out {out} is not empty and holds no {SUMMARY_FILE}; choose a new or "
                         "empty directory (a directory this command wrote is overwritten)")


def build_samples(log, out, config: SampleConfig | None = None, *, progress: bool = True) -> dict:
    """Read `log`, write events.jsonl, impressions.jsonl and samples.json into `out`;
    return the contents of samples.json."""
    config = config or SampleConfig()
    config.validate()
    log, out = Path(log), Path(out)
    if not log.is_file():
        raise FileNotFoundError(f"--log {log}: no such file (give the Taobao UserBehavior.csv "
                                "or an events JSONL file)")
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    tmp = out / f".tmp-samples-{os.getpid()}"
    tmp.mkdir()
    try:
        by_user = ExternalSort(tmp, "by_user", config.chunk_lines)
        by_time = ExternalSort(tmp, "by_time", config.chunk_lines)
        counts, categories = _read_log(log, config, by_user, by_time, summary, progress)
        if not counts:
            raise ValueError(f"{log}: no valid behaviour inside the window "
                             f"({summary.malformed} malformed, {summary.outside_window} outside); "
                             "check the file format or pass --window none")
        sampler = NegativeSampler(counts, categories, config.negatives, config.popularity_power)
        del counts, categories
        samples = ExternalSort(tmp, "samples", config.chunk_lines)
        target_times = array("q")
        merged = _progress(by_user.sorted(), progress, desc="samples", unit=" events",
                           total=by_user.count)
        for user, group in itertools.groupby(merged, key=lambda row: row[0]):
            for row in _user_samples(user, list(group), config, sampler, summary):
                samples.add(row)
                if row[5] == 1:
                    target_times.append(row[0])
        if not target_times:
            raise ValueError(f"{log}: no user has {config.min_behaviours} behaviours at different "
                             "times; nothing to train on")
        cut = int(math.floor(np.quantile(np.frombuffer(target_times, np.int64),
                                         config.eval_quantile)))
        summary.eval_cut_time_ms = cut
        eval_users: set[int] = set()

        def impression_lines():
            for row in samples.sorted():
                if row[0] > cut:
                    summary.samples_eval += 1
                    eval_users.add(row[1])
                else:
                    summary.samples_train += 1
                yield _impression_line(row)

        _write_lines(out / "impressions.jsonl", _progress(
            impression_lines(), progress, desc="impressions.jsonl", unit=" samples",
            total=samples.count))
        summary.users_eval = len(eval_users)
        _write_lines(out / "events.jsonl", _progress(
            map(_event_line, by_time.sorted()), progress, desc="events.jsonl", unit=" events",
            total=by_time.count))
        summary.sorted_runs = len(by_user.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if summary.samples_train == 0 or summary.samples_eval == 0:
        raise ValueError(f"the split at the {config.eval_quantile} quantile of target times leaves "
                         f"{summary.samples_train} train and {summary.samples_eval} eval samples "
                         "(too many targets share one time); change --eval_quantile")
    result = {
        "summary": dataclasses.asdict(summary),
        "params": {**dataclasses.asdict(config), "log": str(log)},
        "trainer": {
            "eval_fraction": trainer_eval_fraction(summary.samples_train, summary.samples_eval),
            "max_len": config.max_history,
        },
    }
    (out / SUMMARY_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def parser() -> argparse.ArgumentParser:
    d = SampleConfig()
    p = argparse.ArgumentParser(
        prog="python -m tf_models.data.samples",
        description="Turn a behaviour log (Taobao UserBehavior.csv or events JSONL) into a "
        "training data directory (events.jsonl, impressions.jsonl, samples.json) as the "
        "DIEN/MIMN papers do for Taobao: the last behaviour of each user is the target, a "
        "positive with its item and a negative with a sampled item, split by time. "
        "See docs/training_data.md.",
    )
    p.add_argument("--log", required=True,
                   help="behaviour log: a Taobao CSV (name ending in .csv) or events JSONL")
    p.add_argument("--out", required=True, help="data directory to write (new or empty)")
    p.add_argument("--max_history", type=int, default=d.max_history,
                   help=f"history length the samples are for: negatives avoid the last this many "
                   f"behaviours; train with --max_len equal to it ({d.max_history}, as MIMN)")
    p.add_argument("--targets_per_user", type=int, default=d.targets_per_user,
                   help=f"the last K behaviours of each user become targets ({d.targets_per_user}, "
                   "as the papers)")
    p.add_argument("--eval_quantile", type=float, default=d.eval_quantile,
                   help=f"samples whose time is after this quantile of the targets' times are "
                   f"held out for eval ({d.eval_quantile}, as MIMN)")
    p.add_argument("--negatives", choices=NEGATIVE_DISTRIBUTIONS, default=d.negatives,
                   help="negative item distribution over the log's items: uniform (MIMN's Taobao "
                   "script, the default) or popularity = count^power (DIEN's scripts)")
    p.add_argument("--popularity_power", type=float, default=d.popularity_power,
                   help=f"power of the item count with --negatives popularity ({d.popularity_power:g})")
    p.add_argument("--window", default=None,
                   help=f"keep behaviours in START,END: dates YYYY-MM-DD in Beijing time (END "
                   f"included) or epoch ms (END excluded), or none. Default: {TAOBAO_WINDOW} for "
                   "a .csv log (the Taobao nine days), none for JSONL")
    p.add_argument("--min_behaviours", type=int, default=d.min_behaviours,
                   help=f"users with fewer behaviours give no samples ({d.min_behaviours})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"negative sampling seed ({d.seed})")
    p.add_argument("--chunk_lines", type=int, default=d.chunk_lines,
                   help=f"events sorted in memory at a time; bounds memory (about 0.5 GB per "
                   f"million) ({d.chunk_lines})")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    log = Path(args.log)
    try:
        window = parse_window(args.window or default_window(log))
        config = SampleConfig(
            max_history=args.max_history, targets_per_user=args.targets_per_user,
            eval_quantile=args.eval_quantile, negatives=args.negatives,
            popularity_power=args.popularity_power, window_ms=window,
            min_behaviours=args.min_behaviours, seed=args.seed, chunk_lines=args.chunk_lines)
        config.validate()
    except ValueError as err:
        p.error(str(err))
    try:
        result = build_samples(log, args.out, config, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    except OSError as err:
        print(f"error: {err} (check that --out is writable and that its disk has room for "
              "events.jsonl, about 150 bytes per event, and as much again for the sorted runs)",
              file=sys.stderr)
        return 1
    summary = Summary(**result["summary"])
    print(summary.report())
    trainer = result["trainer"]
    print(f"wrote {args.out}/events.jsonl, impressions.jsonl, {SUMMARY_FILE}\ntrain with:\n"
          f"  python -m tf_models.train --model mimn --data {args.out} --out runs/mimn "
          f"--max_len {trainer['max_len']} --eval_fraction {trainer['eval_fraction']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
