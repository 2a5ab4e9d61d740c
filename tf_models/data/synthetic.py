"""Synthetic behaviour logs and labelled impressions in which order and long-ago behaviour
both matter for clicks, so sequence models (DIEN, MIMN) have something a sum-pooled
Embedding&MLP cannot fully capture.

Generative story (all draws from numpy generators seeded by ``seed``; each user's draws come
from its own stream ``(seed, 1, user_index)``, so output does not depend on chunking):

1. World. ``categories`` category ids spread over [1, 9000] with Zipf popularity
   (exponent ``category_zipf``) over a random ranking. ``items`` item ids spread over
   [1, 5,000,000], each in one category (categories get items in proportion to the square
   root of their popularity, at least 20 each); inside a category items have Zipf popularity
   (exponent ``item_zipf``). Every item has a small latent quality ``q_i ~ N(0, item_quality_sd)``.
2. User. Activity ``n_u`` ~ log-normal with mean ``mean_events``, clipped to
   [``min_events``, ``max_events``]; a history span of 30-120 days ending near ``end_time_ms``.
   ``min_interests``-``max_interests`` (3-6) *active interests* (categories drawn by popularity) with Dirichlet(1) weights, and
   0-2 *recurring interests* with a period of 10-35 days.
3. Sessions. Normal sessions (length ~ 1 + Poisson(``session_mean_len`` - 1)) at uniform times
   over the span; each has a *focus*: the previous focus with probability ``focus_persist``,
   else an active interest by weight. Before each session, with probability ``drift``, one
   active interest is replaced by a new category (interests drift). Each recurring interest
   adds a short burst session once per period (it comes back after a long gap). In a normal
   session an event's category is the focus w.p. ``p_focus``, another active interest w.p.
   ``p_other``, else any category by popularity; in a burst it is the recurring category
   w.p. 0.9. Items are drawn by popularity inside the category; behaviour types
   pv/cart/fav/buy with probabilities 0.88/0.06/0.03/0.03; events of a user are at least 1 s
   apart (gaps ~ 1 s + Exp(45 s) in a session).
4. Impressions. About ``impressions_per_user`` per user, each placed after a uniformly chosen
   prefix of k >= ``min_prefix`` events, at a time strictly between event k and event k+1, so
   the history it is judged on is exactly the events before its time. The candidate category is
   the category of one of the last 5 events (w.p. ``cand_recent`` = 0.40), of a uniformly
   chosen earlier event (``cand_history`` = 0.45) or any category by popularity (0.15); the
   item is drawn by popularity within it.
5. Click. With the prefix h_1..h_k, window W = ``recent_window`` and decay d = ``recent_decay``:

       recent(c) = sum_{j<W} d^j [cat(h_{k-j}) = c] / sum_{j<W} d^j     (most recent j = 0)
       long(c)   = 1 - exp(-#{i <= k-W : cat(h_i) = c} / long_scale)    (older than the window)
       P(click)  = sigmoid(bias + w_recent * recent(c) + w_long * long(c) + q_item)

   The label is a Bernoulli draw from it. ``recent`` depends on order and recency, which a
   sum-pool over the whole history cannot see; ``long`` rewards interests seen long ago
   (recurring ones included) even when absent from the recent window.

The statistics file reports the AUC of the true click probability (the ceiling for any model)
and of an order-free score that uses the same formula with ``recent`` replaced by the
category's share of the *whole* history (roughly what a sum-pool model can see).

CLI::

    python -m tf_models.data.synthetic --out data/demo --users 2000 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tf_models.metrics import auc
from uic.events import BEHAVIOR_TYPES, Event, Impression

END_TIME_MS = 1_512_345_599_000  # 2017-12-03 23:59:59 UTC, the end of the Taobao log
DAY_MS = 86_400_000
_TYPE_P = np.array([0.88, 0.06, 0.03, 0.03])


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 2000
    seed: int = 0
    categories: int = 200
    items: int = 50_000
    mean_events: float = 100.0
    min_events: int = 50
    max_events: int = 300
    impressions_per_user: float = 20.0
    min_prefix: int = 5
    category_zipf: float = 0.9
    item_zipf: float = 1.1
    item_quality_sd: float = 0.3
    session_mean_len: float = 12.0
    focus_persist: float = 0.3
    drift: float = 0.1
    p_focus: float = 0.8
    p_other: float = 0.12
    min_interests: int = 3
    max_interests: int = 6
    cand_recent: float = 0.40
    cand_history: float = 0.45
    recent_window: int = 20
    recent_decay: float = 0.85
    long_scale: float = 5.0
    bias: float = -3.5
    w_recent: float = 6.0
    w_long: float = 1.5
    end_time_ms: int = END_TIME_MS

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter."""
        checks = {
            "users": self.users >= 1,
            "categories": 2 <= self.categories <= 9000,
            "items": self.items >= 20 * self.categories and self.items <= 1_000_000,
            "min_events": 1 <= self.min_events <= self.max_events,
            "max_events": self.max_events <= 100_000,
            "mean_events": self.min_events <= self.mean_events <= self.max_events,
            "impressions_per_user": self.impressions_per_user >= 0,
            "min_prefix": 1 <= self.min_prefix <= self.min_events,
            "session_mean_len": self.session_mean_len >= 1,
            "recent_window": self.recent_window >= 1,
            "recent_decay": 0 < self.recent_decay <= 1,
            "long_scale": self.long_scale > 0,
            "p_focus": 0 <= self.p_focus and 0 <= self.p_other and self.p_focus + self.p_other <= 1,
            "focus_persist": 0 <= self.focus_persist <= 1,
            "drift": 0 <= self.drift <= 1,
            "min_interests": 1 <= self.min_interests <= self.max_interests <= 50,
            "cand_recent": 0 <= self.cand_recent and 0 <= self.cand_history
            and self.cand_recent + self.cand_history <= 1,
            "end_time_ms": self.end_time_ms > 200 * DAY_MS,
        }
        hints = {
            "items": "need at least 20 items per category and at most 1,000,000",
            "categories": "must be in [2, 9000]",
            "min_events": "need 1 <= min_events <= max_events",
            "mean_events": "must lie in [min_events, max_events]",
            "min_prefix": "must be in [1, min_events]",
            "p_focus": "p_focus and p_other must be >= 0 with sum <= 1",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: "
                                 f"{hints.get(name, 'out of range')}")


@dataclass
class World:
    """Categories and items shared by all users."""

    cate_ids: np.ndarray  # int64 [C]
    cate_cdf: np.ndarray  # float64 [C], popularity CDF
    items: list[np.ndarray]  # per category: item ids int64
    item_cdf: list[np.ndarray]  # per category: popularity CDF
    quality: list[np.ndarray]  # per category: latent item quality


@dataclass
class UserData:
    user_id: int
    events: list[Event]
    impressions: list[Impression]
    click_prob: list[float]  # true P(click) of each impression
    order_free_score: list[float] = field(default_factory=list)  # see module docstring


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """n distinct ints in [low, high], in random order (no O(high) memory)."""
    out: dict[int, None] = {}
    while len(out) < n:
        for v in rng.integers(low, high + 1, size=max(16, 2 * (n - len(out)))):
            out.setdefault(int(v), None)
            if len(out) == n:
                break
    return np.fromiter(out, dtype=np.int64, count=n)


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    cdf = np.cumsum(w)
    return cdf / cdf[-1]


def make_world(config: SyntheticConfig) -> World:
    rng = np.random.default_rng([config.seed, 0])
    c = config.categories
    cate_ids = _unique_ints(rng, c, 1, 9000)
    cate_cdf = _zipf_cdf(c, config.category_zipf)  # category index i has popularity rank i
    pop = np.diff(np.concatenate([[0.0], cate_cdf]))
    share = np.sqrt(pop) / np.sqrt(pop).sum()
    counts = np.maximum(20, np.floor(share * config.items).astype(int))
    all_items = _unique_ints(rng, int(counts.sum()), 1, 5_000_000)
    items, item_cdf, quality = [], [], []
    start = 0
    for n in counts:
        items.append(all_items[start:start + n])
        item_cdf.append(_zipf_cdf(int(n), config.item_zipf))
        quality.append(rng.normal(0.0, config.item_quality_sd, size=int(n)))
        start += n
    return World(cate_ids, cate_cdf, items, item_cdf, quality)


def user_ids(config: SyntheticConfig) -> np.ndarray:
    """The user ids, large and spread out like real ones (deterministic by seed)."""
    return _unique_ints(np.random.default_rng([config.seed, 2]), config.users, 10_000, 2_000_000_000)


def click_probability(prefix_cats: list[int], cand_cat: int, quality: float,
                      config: SyntheticConfig) -> tuple[float, float]:
    """(true P(click), order-free score) of a candidate of category index `cand_cat` after a
    history whose category indices are `prefix_cats` (oldest first). See the module docstring."""
    w, d = config.recent_window, config.recent_decay
    recent_part = prefix_cats[-w:]
    num = 0.0
    den = 0.0
    for j, cat in enumerate(reversed(recent_part)):
        weight = d ** j
        den += weight
        if cat == cand_cat:
            num += weight
    full_den = sum(d ** j for j in range(w))
    recent = num / full_den if den else 0.0
    older = prefix_cats[:-w] if len(prefix_cats) > w else []
    long = 1.0 - math.exp(-older.count(cand_cat) / config.long_scale)
    logit = config.bias + config.w_recent * recent + config.w_long * long + quality
    p = 1.0 / (1.0 + math.exp(-logit))
    share = prefix_cats.count(cand_cat) / max(1, len(prefix_cats))
    long_all = 1.0 - math.exp(-prefix_cats.count(cand_cat) / config.long_scale)
    order_free = config.w_recent * share + config.w_long * long_all + quality
    return p, order_free


def _draw_cat(rng: np.random.Generator, world: World) -> int:
    return int(np.searchsorted(world.cate_cdf, rng.random()))


def _draw_item(rng: np.random.Generator, world: World, cat: int) -> int:
    return int(np.searchsorted(world.item_cdf[cat], rng.random()))


def generate_user(index: int, user_id: int, world: World, config: SyntheticConfig) -> UserData:
    """One user's events (time order) and impressions, from its own random stream."""
    rng = np.random.default_rng([config.seed, 1, index])
    sigma = 0.6
    n_target = int(np.clip(round(rng.lognormal(math.log(config.mean_events) - sigma**2 / 2, sigma)),
                           config.min_events, config.max_events))
    span = int(rng.uniform(30, 120) * DAY_MS)
    end = config.end_time_ms - int(rng.uniform(0, 2) * DAY_MS)
    start = end - span
    n_cat = len(world.cate_ids)

    def new_interest(exclude: set[int]) -> int:
        for _ in range(100):
            cat = _draw_cat(rng, world)
            if cat not in exclude:
                return cat
        return int(rng.integers(n_cat))

    active: list[int] = []
    for _ in range(int(rng.integers(config.min_interests, config.max_interests + 1))):
        active.append(new_interest(set(active)))
    weights = list(rng.dirichlet(np.ones(len(active))))
    recurring = []
    for _ in range(int(rng.choice(3, p=[0.3, 0.5, 0.2]))):
        recurring.append((new_interest(set(active) | {r for r, _ in recurring}),
                          rng.uniform(10, 35) * DAY_MS))

    # Normal sessions until the activity budget is used, then the recurring bursts.
    lengths = []
    while sum(lengths) < n_target:
        lengths.append(1 + int(rng.poisson(config.session_mean_len - 1)))
    lengths[-1] -= sum(lengths) - n_target
    sessions = [(int(t), "normal", ln) for t, ln in
                zip(np.sort(rng.uniform(start, end, size=len(lengths))), lengths, strict=True)]
    for cat, period in recurring:
        t = start + rng.uniform(0, period)
        while t < end:
            sessions.append((int(t), ("burst", cat), int(rng.integers(3, 8))))
            t += period * rng.uniform(0.8, 1.2)
    sessions.sort(key=lambda s: s[0])

    cats: list[int] = []
    items: list[int] = []
    times: list[int] = []
    focus = None
    last_t = start - 1000
    for t0, kind, length in sessions:
        if kind == "normal":
            if rng.random() < config.drift:
                slot = int(rng.integers(len(active)))
                active[slot] = new_interest(set(active))
                weights[slot] = float(rng.dirichlet(np.ones(len(active)))[0])
            if focus is None or focus not in active or rng.random() >= config.focus_persist:
                w = np.asarray(weights) / np.sum(weights)
                focus = active[int(rng.choice(len(active), p=w))]
        t = max(t0, last_t + 1000)
        for _ in range(length):
            u = rng.random()
            if kind == "normal":
                if u < config.p_focus:
                    cat = focus
                elif u < config.p_focus + config.p_other and len(active) > 1:
                    others = [a for a in active if a != focus] or active
                    cat = others[int(rng.integers(len(others)))]
                else:
                    cat = _draw_cat(rng, world)
            else:
                cat = kind[1] if u < 0.9 else _draw_cat(rng, world)
            cats.append(cat)
            items.append(_draw_item(rng, world, cat))
            times.append(t)
            last_t = t
            t += 1000 + int(rng.exponential(45_000))
    if len(cats) > config.max_events:  # bursts may push past the cap: keep the newest
        cut = len(cats) - config.max_events
        cats, items, times = cats[cut:], items[cut:], times[cut:]

    types = rng.choice(len(BEHAVIOR_TYPES), size=len(cats), p=_TYPE_P)
    events = [
        Event(user_id=user_id, item_id=int(world.items[c][i]), category_id=int(world.cate_ids[c]),
              behavior_type=BEHAVIOR_TYPES[tp], event_time_ms=ts, event_id=f"{user_id}-{n:05d}")
        for n, (c, i, ts, tp) in enumerate(zip(cats, items, times, types, strict=True))
    ]

    impressions, probs, order_free = [], [], []
    n_imp = int(rng.poisson(config.impressions_per_user))
    n_ev = len(cats)
    lo = min(config.min_prefix, n_ev)
    for k in sorted(int(x) for x in rng.integers(lo, n_ev + 1, size=n_imp)):
        prefix = cats[:k]
        u = rng.random()
        if u < config.cand_recent:
            cand = prefix[-1 - int(rng.integers(min(5, k)))]
        elif u < config.cand_recent + config.cand_history:
            cand = prefix[int(rng.integers(k))]
        else:
            cand = _draw_cat(rng, world)
        item = _draw_item(rng, world, cand)
        p, free = click_probability(prefix, cand, float(world.quality[cand][item]), config)
        gap = (times[k] - times[k - 1]) if k < n_ev else 3_600_000
        ts = times[k - 1] + 1 + int(rng.integers(max(1, gap - 1)))
        impressions.append(Impression(user_id=user_id, item_id=int(world.items[cand][item]),
                                      category_id=int(world.cate_ids[cand]), event_time_ms=ts,
                                      label=int(rng.random() < p)))
        probs.append(p)
        order_free.append(free)
    return UserData(user_id, events, impressions, probs, order_free)


def iter_users(config: SyntheticConfig) -> Iterator[UserData]:
    """All users, one at a time (each user's events in time order): for in-memory use."""
    config.validate()
    world = make_world(config)
    for index, uid in enumerate(user_ids(config)):
        yield generate_user(index, int(uid), world, config)


def _event_json(ev: Event) -> str:
    """Same text as `Event.to_json` (field order, separators), without dataclasses.asdict's
    deep copies, which dominate the generator's run time otherwise."""
    return json.dumps({"user_id": ev.user_id, "item_id": ev.item_id,
                       "category_id": ev.category_id, "behavior_type": ev.behavior_type,
                       "event_time_ms": ev.event_time_ms, "event_id": ev.event_id},
                      separators=(",", ":"))


def _impression_json(imp: Impression) -> str:
    """Same text as `Impression.to_json`."""
    return json.dumps({"user_id": imp.user_id, "item_id": imp.item_id,
                       "category_id": imp.category_id, "event_time_ms": imp.event_time_ms,
                       "label": imp.label}, separators=(",", ":"))


class _Spill:
    """Sorted runs of sort-key-prefixed lines on disk, merged at the end (external sort), so
    millions of events never sit in memory at once."""

    def __init__(self, tmp: Path, name: str):
        self.tmp, self.name = tmp, name
        self.buffer: list[str] = []
        self.runs: list[Path] = []
        self.count = 0

    def add(self, key: str, line: str) -> None:
        self.buffer.append(f"{key}\t{line}\n")
        self.count += 1

    def flush(self) -> None:
        if not self.buffer:
            return
        self.buffer.sort()
        path = self.tmp / f"{self.name}.{len(self.runs):05d}"
        path.write_text("".join(self.buffer))
        self.runs.append(path)
        self.buffer = []

    def merge_into(self, out: Path, progress) -> None:
        self.flush()
        part = out.with_suffix(out.suffix + ".part")
        with contextlib.ExitStack() as stack, part.open("w") as f:
            files = [stack.enter_context(p.open()) for p in self.runs]
            done = 0
            for done, line in enumerate(heapq.merge(*files), start=1):
                f.write(line.split("\t", 2)[2])
                if done % 20_000 == 0:
                    progress.update(20_000)
            progress.update(done % 20_000)
        os.replace(part, out)


def generate(out_dir, config: SyntheticConfig | None = None, *, progress: bool = True,
             spill_every: int = 500_000) -> dict:
    """Write DIR/events.jsonl, DIR/impressions.jsonl and DIR/stats.json; return the stats."""
    from tqdm import tqdm

    config = config or SyntheticConfig()
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-synthetic-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        world = make_world(config)
        ev_spill, imp_spill = _Spill(tmp, "events"), _Spill(tmp, "impressions")
        lengths, type_counts = [], dict.fromkeys(BEHAVIOR_TYPES, 0)
        probs, free_scores, labels = [], [], []
        keep_for_auc = 2_000_000
        t_min, t_max = None, None
        ids = user_ids(config)
        for index, uid in enumerate(tqdm(ids, desc="users", unit="user", disable=not progress)):
            user = generate_user(index, int(uid), world, config)
            for ev in user.events:
                ev_spill.add(f"{ev.event_time_ms:020d}\t{ev.event_id}", _event_json(ev))
                type_counts[ev.behavior_type] += 1
            for imp in user.impressions:
                imp_spill.add(f"{imp.event_time_ms:020d}\t{imp.user_id:020d}", _impression_json(imp))
            lengths.append(len(user.events))
            if user.events:
                t_min = min(t_min or user.events[0].event_time_ms, user.events[0].event_time_ms)
                t_max = max(t_max or 0, user.events[-1].event_time_ms)
            if len(labels) < keep_for_auc:
                probs.extend(user.click_prob)
                free_scores.extend(user.order_free_score)
                labels.extend(i.label for i in user.impressions)
            if len(ev_spill.buffer) >= spill_every:
                ev_spill.flush()
                imp_spill.flush()
        with tqdm(total=ev_spill.count, desc="events.jsonl", unit="ev", disable=not progress) as bar:
            ev_spill.merge_into(out / "events.jsonl", bar)
        with tqdm(total=imp_spill.count, desc="impressions.jsonl", unit="imp",
                  disable=not progress) as bar:
            imp_spill.merge_into(out / "impressions.jsonl", bar)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lengths_arr = np.asarray(lengths)
    clicks = int(np.sum(labels))
    stats = {
        "users": config.users,
        "events": int(lengths_arr.sum()),
        "impressions": imp_spill.count,
        "clicks": clicks if imp_spill.count <= keep_for_auc else None,
        "ctr": clicks / len(labels) if labels else None,
        "events_per_user": {"min": int(lengths_arr.min()), "mean": float(lengths_arr.mean()),
                            "p50": float(np.median(lengths_arr)), "max": int(lengths_arr.max())},
        "behavior_types": type_counts,
        "categories": config.categories,
        "items": int(sum(len(x) for x in world.items)),
        "max_item_id": int(max(int(x.max()) for x in world.items)),
        "max_category_id": int(world.cate_ids.max()),
        "time_range_ms": [t_min, t_max],
        "auc_true_probability": auc(probs, labels),
        "auc_order_free_score": auc(free_scores, labels),
        "auc_sample_size": len(labels),
        "seconds": round(time.perf_counter() - t0, 2),
        "params": dataclasses.asdict(config),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tf_models.data.synthetic",
        description="Generate synthetic behaviour events and labelled impressions (JSONL) whose "
        "clicks depend on recent order and long-term interests. Writes events.jsonl, "
        "impressions.jsonl and stats.json into --out.",
    )
    d = SyntheticConfig()
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--users", type=_positive_int, default=d.users, help=f"number of users ({d.users})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    p.add_argument("--categories", type=_positive_int, default=d.categories,
                   help=f"number of categories, 2..9000 ({d.categories})")
    p.add_argument("--items", type=_positive_int, default=d.items, help=f"number of items ({d.items})")
    p.add_argument("--mean_events", type=float, default=d.mean_events,
                   help=f"mean events per user ({d.mean_events:g})")
    p.add_argument("--min_events", type=_positive_int, default=d.min_events,
                   help=f"min events per user ({d.min_events})")
    p.add_argument("--max_events", type=_positive_int, default=d.max_events,
                   help=f"max events per user ({d.max_events})")
    p.add_argument("--impressions_per_user", type=float, default=d.impressions_per_user,
                   help=f"mean labelled impressions per user ({d.impressions_per_user:g})")
    p.add_argument("--recent_window", type=_positive_int, default=d.recent_window,
                   help=f"events in the recency term of the click model ({d.recent_window})")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    config = SyntheticConfig(
        users=args.users, seed=args.seed, categories=args.categories, items=args.items,
        mean_events=args.mean_events, min_events=args.min_events, max_events=args.max_events,
        impressions_per_user=args.impressions_per_user, recent_window=args.recent_window,
    )
    try:
        config.validate()
    except ValueError as err:
        p.error(str(err))
    try:
        stats = generate(args.out, config, progress=not args.no_progress)
    except OSError as err:
        print(f"error: cannot write to {args.out}: {err}", file=sys.stderr)
        return 1
    summary = {k: stats[k] for k in ("users", "events", "impressions", "ctr",
                                     "auc_true_probability", "auc_order_free_score", "seconds")}
    print(json.dumps(summary))
    print(f"wrote {args.out}/events.jsonl, impressions.jsonl, stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
