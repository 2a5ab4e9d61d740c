"""A synthetic behaviour log in Taobao's `UserBehavior.csv` format, with the real file's shape,
for measuring the pipelines at scale without the real file.

Why not `tf_models.data.synthetic`: that generator builds a *learnable* world (interests,
sessions, labelled impressions) at a few thousand users; this one only reproduces the public
log's *shape* (how many users, items and categories, how skewed they are, the behaviour mix
and the nine days) at tens of millions of lines, fast and in bounded memory. Nothing in it
is meant to be learned: the benchmark that uses it measures time and memory, not AUC.

Shape (the defaults, scaled from the public file's 100,150,807 lines, 987,994 users,
4,162,024 items and 9,439 categories):

* users: ``lines * 987,994 / 100,150,807`` of them (about 101 behaviours each on average);
  the lines are split over them by a multinomial draw with Zipf weights ``rank^-user_zipf``
  (0.5: with 100 k users the most active has about 16 k behaviours, the least about 50);
* items: a universe of ``lines * 4,162,024 / 100,150,807``, each line's item drawn with Zipf
  popularity ``rank^-item_zipf`` (0.8), so many items of the universe never appear;
* categories: 9,439, each item in one of them, drawn with Zipf popularity ``rank^-category_zipf``
  (0.9), so popular categories hold more items;
* behaviour types in the public file's proportions: pv 89,716,264, cart 5,530,446,
  fav 2,888,258, buy 2,015,839 lines;
* timestamps (Unix seconds) over 2017-11-25..2017-12-03 Beijing time, uniform over the days,
  with a day-night profile over the hours;
* ids: users ascending in ``[1, 1.03 x users]`` (the file is grouped by user, as the public
  one is), items in ``[1, 1.24 x items]`` and categories in ``[1, 5,162,429]``, sparse as in
  the public file; within a user the lines are not in time order.

Streaming and seeded: users are written in chunks of about ``chunk_lines`` lines, each chunk
from its own generator ``(seed, 1, chunk)``; what stays in memory is the per-user and per-item
tables (about 40 bytes per user and per item of the universe) and one chunk.

    python -m tf_models.data.taobao_synth --out data/big/UserBehavior.csv --lines 10000000
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

# the public UserBehavior.csv
TAOBAO_LINES = 100_150_807
TAOBAO_USERS = 987_994
TAOBAO_ITEMS = 4_162_024
TAOBAO_CATEGORIES = 9_439
BEHAVIOUR_LINES = {"pv": 89_716_264, "cart": 5_530_446, "fav": 2_888_258, "buy": 2_015_839}
MAX_CATEGORY_ID = 5_162_429
START_S = 1_511_539_200  # 2017-11-25 00:00 Beijing time (UTC+8)
DAYS = 9
# relative activity by Beijing hour 0..23: a night trough and an evening peak
HOUR_PROFILE = (3.0, 1.6, 0.9, 0.6, 0.5, 0.6, 1.2, 2.3, 3.3, 4.0, 4.4, 4.5,
                4.4, 4.5, 4.5, 4.5, 4.4, 4.3, 4.5, 5.2, 6.1, 6.6, 6.2, 4.6)


@dataclasses.dataclass(frozen=True)
class TaobaoShape:
    lines: int = 10_000_000
    users: int | None = None  # None: scaled from the public file
    items: int | None = None  # size of the item universe; None: scaled
    categories: int = TAOBAO_CATEGORIES
    user_zipf: float = 0.5
    item_zipf: float = 0.8
    category_zipf: float = 0.9
    seed: int = 0
    chunk_lines: int = 500_000

    def resolved(self) -> TaobaoShape:
        """The shape with users and items filled in (at least 1 user, 2 items)."""
        users = self.users or max(1, round(self.lines * TAOBAO_USERS / TAOBAO_LINES))
        items = self.items or max(2, round(self.lines * TAOBAO_ITEMS / TAOBAO_LINES))
        return dataclasses.replace(self, users=min(users, self.lines), items=items,
                                   categories=min(self.categories, items))

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter and what it must be."""
        checks = [
            ("lines", self.lines >= 1, "must be >= 1"),
            ("users", self.users is None or self.users >= 1, "must be >= 1"),
            ("items", self.items is None or self.items >= 2, "must be >= 2"),
            ("categories", self.categories >= 1, "must be >= 1"),
            ("user_zipf", self.user_zipf >= 0, "must be >= 0 (0 = uniform)"),
            ("item_zipf", self.item_zipf >= 0, "must be >= 0 (0 = uniform)"),
            ("category_zipf", self.category_zipf >= 0, "must be >= 0 (0 = uniform)"),
            ("chunk_lines", self.chunk_lines >= 1, "must be >= 1"),
        ]
        for name, ok, hint in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {hint}")


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """Cumulative probabilities of ranks 1..n with weights rank^-exponent."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _draw(cdf: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n ranks (0-based) drawn by inverse CDF."""
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _sparse_ids(rng: np.random.Generator, n: int, high: int) -> np.ndarray:
    """n distinct ids in [1, high], in random order."""
    return rng.choice(high, size=n, replace=False).astype(np.int64) + 1


class _World:
    """The per-user and per-item tables, drawn once from the seed."""

    def __init__(self, shape: TaobaoShape):
        rng = np.random.default_rng([shape.seed, 0])
        self.user_ids = np.sort(_sparse_ids(rng, shape.users, math.ceil(shape.users * 1.03)))
        weights = np.arange(1, shape.users + 1, dtype=np.float64) ** -shape.user_zipf
        per_rank = rng.multinomial(shape.lines, weights / weights.sum())
        self.user_lines = per_rank[rng.permutation(shape.users)]  # rank -> random user
        self.item_ids = _sparse_ids(rng, shape.items, math.ceil(shape.items * 1.24))
        self.item_cdf = _zipf_cdf(shape.items, shape.item_zipf)
        category_ids = _sparse_ids(rng, shape.categories, MAX_CATEGORY_ID)
        self.item_category = category_ids[
            _draw(_zipf_cdf(shape.categories, shape.category_zipf), rng, shape.items)]
        counts = np.array(list(BEHAVIOUR_LINES.values()), dtype=np.float64)
        self.type_cdf = np.cumsum(counts) / counts.sum()
        self.types = np.array(list(BEHAVIOUR_LINES))
        hours = np.array(HOUR_PROFILE)
        self.hour_cdf = np.cumsum(hours) / hours.sum()


def _chunks(user_lines: np.ndarray, chunk_lines: int):
    """(first user, end user) ranges of about chunk_lines lines each."""
    ends = np.cumsum(user_lines)
    first = 0
    while first < len(user_lines):
        before = ends[first - 1] if first else 0
        end = int(np.searchsorted(ends, before + chunk_lines, side="left")) + 1
        end = min(max(end, first + 1), len(user_lines))
        yield first, end
        first = end


def _chunk_text(world: _World, shape: TaobaoShape, index: int, first: int, end: int) -> str:
    rng = np.random.default_rng([shape.seed, 1, index])
    counts = world.user_lines[first:end]
    n = int(counts.sum())
    users = np.repeat(world.user_ids[first:end], counts)
    ranks = _draw(world.item_cdf, rng, n)
    items, categories = world.item_ids[ranks], world.item_category[ranks]
    types = world.types[_draw(world.type_cdf, rng, n)]
    seconds = (START_S + rng.integers(0, DAYS, n) * 86_400
               + _draw(world.hour_cdf, rng, n) * 3600 + rng.integers(0, 3600, n))
    return "".join(f"{u},{i},{c},{t},{s}\n" for u, i, c, t, s in zip(
        users.tolist(), items.tolist(), categories.tolist(), types.tolist(), seconds.tolist(),
        strict=True))


def write_taobao_csv(path, shape: TaobaoShape | None = None, *, progress: bool = True) -> dict:
    """Write the log to `path`; return what was written (lines, users, the resolved shape)."""
    shape = shape or TaobaoShape()
    shape.validate()
    shape = shape.resolved()
    world = _World(shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=shape.lines, desc=path.name, unit=" lines", unit_scale=True,
                   file=sys.stderr)
    written = 0
    with path.open("w", encoding="ascii", newline="\n") as f:
        for index, (first, end) in enumerate(_chunks(world.user_lines, shape.chunk_lines)):
            f.write(_chunk_text(world, shape, index, first, end))
            n = int(world.user_lines[first:end].sum())
            written += n
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    return {"path": str(path), "lines": written,
            "users": int(np.count_nonzero(world.user_lines)),
            "max_user_lines": int(world.user_lines.max()),
            "min_user_lines": int(world.user_lines.min()),
            "shape": dataclasses.asdict(shape)}


def main(argv: list[str] | None = None) -> int:
    d = TaobaoShape()
    p = argparse.ArgumentParser(
        prog="python -m tf_models.data.taobao_synth",
        description="Write a synthetic behaviour log in Taobao's UserBehavior.csv format "
        "(user_id,item_id,category_id,behavior_type,timestamp) with the public file's shape: "
        "Zipf users, items and categories, its behaviour mix, nine days. For benchmarks.")
    p.add_argument("--out", required=True, help="CSV file to write (overwritten)")
    p.add_argument("--lines", type=int, default=d.lines, help=f"lines to write ({d.lines:,})")
    p.add_argument("--users", type=int, default=None,
                   help="number of users (default: scaled from the public file, about "
                   "lines / 101)")
    p.add_argument("--items", type=int, default=None,
                   help="size of the item universe (default: scaled, about lines / 24)")
    p.add_argument("--categories", type=int, default=d.categories,
                   help=f"number of categories ({d.categories:,}, as the public file)")
    p.add_argument("--user_zipf", type=float, default=d.user_zipf,
                   help=f"Zipf exponent of user activity ({d.user_zipf})")
    p.add_argument("--item_zipf", type=float, default=d.item_zipf,
                   help=f"Zipf exponent of item popularity ({d.item_zipf})")
    p.add_argument("--category_zipf", type=float, default=d.category_zipf,
                   help=f"Zipf exponent of category popularity ({d.category_zipf})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    shape = TaobaoShape(lines=args.lines, users=args.users, items=args.items,
                        categories=args.categories, user_zipf=args.user_zipf,
                        item_zipf=args.item_zipf, category_zipf=args.category_zipf,
                        seed=args.seed)
    try:
        shape.validate()
    except ValueError as err:
        p.error(str(err))
    try:
        info = write_taobao_csv(args.out, shape, progress=not args.no_progress)
    except OSError as err:
        print(f"error: {err} (check that --out is writable and its disk has room: about "
              "38 bytes per line)", file=sys.stderr)
        return 1
    print(f"wrote {info['path']}: {info['lines']:,} lines, {info['users']:,} users "
          f"({info['min_user_lines']:,}..{info['max_user_lines']:,} lines each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
