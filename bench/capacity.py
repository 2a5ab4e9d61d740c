"""Stepped capacity search: the highest offered rate that still meets a latency SLO.

Capacity, not the latency of a saturated queue, is the figure to compare architectures by:
past saturation a queue's delay only says how long the cell ran. The search climbs from
`start` by `factor` while the SLO holds; once a rate fails it bisects (geometric midpoint)
between the highest passing and the lowest failing rate until they are within
`resolution`. If `start` itself fails it halves down to `min_rate`; if that fails too the
capacity is 0. If `max_rate` passes the capacity is reported as at least `max_rate`.

The search is a pure function of the observations so far (rate -> passed), so several
searches can be advanced in interleaved order and share one set of measured cells, and it
is tested on synthetic latency functions (tests/bench/test_capacity.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SearchPlan:
    start: float = 50.0
    factor: float = 1.5
    resolution: float = 1.12  # stop when lowest failing / highest passing <= this
    min_rate: float = 10.0
    max_rate: float = 1000.0


def next_rate(passed: dict[float, bool], plan: SearchPlan) -> float | None:
    """The next rate to measure, or None when the capacity is known."""
    if not passed:
        return plan.start
    failing = [rate for rate, ok in passed.items() if not ok]
    if not failing:
        top = max(passed)
        return None if top >= plan.max_rate else round(min(top * plan.factor, plan.max_rate), 1)
    lowest_fail = min(failing)
    below = [rate for rate, ok in passed.items() if ok and rate < lowest_fail]
    if not below:
        if lowest_fail <= plan.min_rate:
            return None
        return round(max(lowest_fail / 2, plan.min_rate), 1)
    highest_pass = max(below)
    if lowest_fail / highest_pass <= plan.resolution:
        return None
    return round(math.sqrt(highest_pass * lowest_fail), 1)


def capacity(passed: dict[float, bool], plan: SearchPlan) -> dict:
    """The result once `next_rate` is None: `qps` (0 when nothing passed) and whether it is
    only a lower bound (`at_least`, the top of the search range passed)."""
    failing = [rate for rate, ok in passed.items() if not ok]
    ceiling = min(failing) if failing else math.inf
    below = [rate for rate, ok in passed.items() if ok and rate < ceiling]
    best = max(below) if below else 0.0
    return {"qps": best, "at_least": not failing and best >= plan.max_rate,
            "first_failing_qps": None if not failing else ceiling}
