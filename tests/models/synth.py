"""A small drifting-interest data set for the model tests (independent of tf_models.data).

Each user moves through interest phases (one category per phase); events come mostly from
the current interest. An impression's click probability is high when the candidate's
category is the *current* interest and low when it is an earlier one, so the order of the
history matters: a sum-pooled baseline sees both interests alike, sequence models do not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uic.events import Event, Impression

ITEMS_PER_CATE = 40


def item_of(cate: int, j: int) -> int:
    return cate * 1000 + j + 1


def write_drift_data(out, users: int = 600, cates: int = 24, events_per_user: int = 60,
                     imps_per_user: int = 6, phase: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    events, imps = [], []
    t0 = 1_700_000_000_000
    for user in range(1, users + 1):
        # users start at different times, so a time split does not mean "longest histories"
        start = t0 + int(rng.integers(0, events_per_user)) * 60_000 + user * 7
        interests = rng.choice(np.arange(1, cates + 1), size=events_per_user // phase + 2, replace=False)
        current = []
        for k in range(events_per_user):
            interest = interests[k // phase]
            cate = int(interest) if rng.random() < 0.85 else int(rng.integers(1, cates + 1))
            item = item_of(cate, int(rng.integers(ITEMS_PER_CATE)))
            t = start + k * 60_000
            events.append(Event(user, item, cate, "pv", t, f"e{user}-{k}"))
            current.append(int(interest))
        for _ in range(imps_per_user):
            k = int(rng.integers(5, events_per_user))  # impression right after event k-1
            now = int(current[k - 1])
            seen = sorted({int(c) for c in current[:k] if c != now})
            r = rng.random()
            if r < 0.4 or not seen:
                cate, p = now, 0.8
            elif r < 0.8:
                cate, p = int(rng.choice(seen)), 0.15
            else:
                cate, p = int(rng.integers(1, cates + 1)), 0.1
            item = item_of(cate, int(rng.integers(ITEMS_PER_CATE)))
            label = int(rng.random() < p)
            imps.append(Impression(user, item, cate, start + (k - 1) * 60_000 + 30_000, label))
    events.sort(key=lambda e: (e.event_time_ms, e.event_id))
    imps.sort(key=lambda i: i.event_time_ms)
    (out / "events.jsonl").write_text("".join(e.to_json() + "\n" for e in events))
    (out / "impressions.jsonl").write_text("".join(i.to_json() + "\n" for i in imps))
    return out
