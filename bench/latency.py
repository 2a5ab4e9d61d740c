"""Latency accounting in which every scheduled request counts.

A load test that reports percentiles of its successful requests only flatters an
overloaded system: the requests it failed or never answered are exactly the slow ones.
Here each scheduled request ends in one of four outcomes, and all of them enter the
headline percentiles:

* ``ok``        answered within the timeout; latency = completion - scheduled send time;
* ``timeout``   answered (or given up) after the timeout; its latency is the time it took;
* ``error``     the call raised before the timeout; it did not answer, so it counts as
                taking the full timeout (a fast error is not a fast answer);
* ``abandoned`` still in flight when the cell was closed; latency = time until then.

A cell whose failures (everything but ``ok``) exceed `SATURATION_ERROR_RATE` is marked
saturated. Percentiles of successes alone are reported beside, never instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OK, TIMEOUT, ERROR, ABANDONED = "ok", "timeout", "error", "abandoned"
OUTCOMES = (OK, TIMEOUT, ERROR, ABANDONED)
SATURATION_ERROR_RATE = 0.01


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (and mean, max) in milliseconds of latencies given in seconds."""
    if len(latencies_s) == 0:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"),
                "mean_ms": float("nan"), "max_ms": float("nan")}
    arr = np.asarray(latencies_s, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(float(arr.mean()), 4),
            "max_ms": round(float(arr.max()), 4)}


def counted_latency_s(outcome: str, latency_s: float, timeout_s: float) -> float:
    """The latency a request enters the all-requests percentiles with."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
    if outcome == OK:
        return latency_s
    return max(latency_s, timeout_s)


def cell_stats(outcomes: Sequence[str], latencies_s: Sequence[float], *, scheduled: int,
               window_s: float, timeout_s: float) -> dict:
    """Summarise one cell. `outcomes[i]`, `latencies_s[i]` describe scheduled request i;
    there must be exactly `scheduled` of them (a request counted nowhere is a bug in the
    generator, so it raises). `window_s` is the span over which requests were scheduled."""
    if len(outcomes) != scheduled or len(latencies_s) != scheduled:
        raise ValueError(f"{scheduled} requests were scheduled but {len(outcomes)} outcomes "
                         f"and {len(latencies_s)} latencies were recorded: every scheduled "
                         "request must end as ok, timeout, error or abandoned")
    counts = {name: 0 for name in OUTCOMES}
    for outcome in outcomes:
        if outcome not in counts:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
        counts[outcome] += 1
    counted = [counted_latency_s(o, lat, timeout_s) for o, lat in zip(outcomes, latencies_s,
                                                                      strict=True)]
    ok_latencies = [lat for o, lat in zip(outcomes, latencies_s, strict=True) if o == OK]
    failed = scheduled - counts[OK]
    error_rate = failed / scheduled if scheduled else 0.0
    everything = percentiles_ms(counted)
    successes = percentiles_ms(ok_latencies)
    return {
        "scheduled": scheduled,
        **{f"n_{name}": counts[name] for name in OUTCOMES},
        "error_rate": round(error_rate, 4),
        "goodput_qps": round(counts[OK] / window_s, 2) if window_s > 0 else 0.0,
        "p50_ms": everything["p50_ms"], "p95_ms": everything["p95_ms"],
        "p99_ms": everything["p99_ms"],
        "ok_p50_ms": successes["p50_ms"], "ok_p95_ms": successes["p95_ms"],
        "ok_p99_ms": successes["p99_ms"],
        "timeout_ms": round(timeout_s * 1e3, 1),
        "saturated": error_rate > SATURATION_ERROR_RATE,
    }


def meets_slo(stats: dict, slo_ms: float) -> bool:
    """p99 over all scheduled requests within `slo_ms`, and fewer than 1 % failures."""
    return (not stats["saturated"]) and stats["error_rate"] < SATURATION_ERROR_RATE \
        and stats["p99_ms"] <= slo_ms
