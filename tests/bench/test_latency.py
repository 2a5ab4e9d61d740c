"""Every scheduled request counts: the accounting in bench.latency, on synthetic samples."""

import pytest

from bench.latency import ABANDONED, ERROR, OK, TIMEOUT, cell_stats, meets_slo


def test_failures_enter_the_headline_percentiles_at_least_at_the_timeout():
    # 97 fast answers, 1 fast error, 1 timeout, 1 abandoned: 3 % failures
    outcomes = [OK] * 97 + [ERROR, TIMEOUT, ABANDONED]
    latencies = [0.002] * 97 + [0.001, 1.2, 1.5]
    stats = cell_stats(outcomes, latencies, scheduled=100, window_s=1.0, timeout_s=1.0)
    assert stats["n_ok"] == 97 and stats["n_error"] == stats["n_timeout"] == 1
    assert stats["error_rate"] == pytest.approx(0.03)
    assert stats["saturated"]
    assert stats["goodput_qps"] == pytest.approx(97.0)
    assert stats["ok_p99_ms"] == pytest.approx(2.0)  # successes only: flattering
    assert stats["p99_ms"] >= 1000.0  # all requests: the failures are in it
    assert not meets_slo(stats, 30.0)


def test_a_fast_error_is_not_a_fast_answer():
    outcomes = [OK] * 98 + [ERROR] * 2
    stats = cell_stats(outcomes, [0.005] * 98 + [0.0001] * 2, scheduled=100, window_s=1.0,
                       timeout_s=0.5)
    assert stats["p99_ms"] == pytest.approx(500.0)


def test_under_one_percent_failures_is_not_saturated():
    stats = cell_stats([OK] * 999 + [TIMEOUT], [0.004] * 999 + [0.6], scheduled=1000,
                       window_s=10.0, timeout_s=0.5)
    assert not stats["saturated"] and stats["error_rate"] == pytest.approx(0.001)
    assert meets_slo(stats, 10.0)
    assert not meets_slo(stats, 3.0)


def test_a_request_counted_nowhere_is_refused():
    with pytest.raises(ValueError, match="every scheduled request"):
        cell_stats([OK] * 9, [0.001] * 9, scheduled=10, window_s=1.0, timeout_s=1.0)
    with pytest.raises(ValueError, match="unknown outcome"):
        cell_stats([OK, "lost"], [0.001, 0.001], scheduled=2, window_s=1.0, timeout_s=1.0)
