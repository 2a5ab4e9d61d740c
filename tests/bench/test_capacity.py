"""The stepped capacity search on synthetic systems with a known capacity."""

import pytest

from bench.capacity import SearchPlan, capacity, next_rate


def search(true_capacity: float, plan: SearchPlan) -> tuple[dict, list[float]]:
    passed: dict[float, bool] = {}
    order = []
    while (rate := next_rate(passed, plan)) is not None:
        assert rate not in passed, "the search must not measure a rate twice"
        passed[rate] = rate <= true_capacity
        order.append(rate)
        assert len(order) < 40
    return capacity(passed, plan), order


@pytest.mark.parametrize("true_capacity", [60.0, 137.0, 333.0, 900.0])
def test_finds_the_capacity_within_the_resolution(true_capacity):
    plan = SearchPlan(start=50, factor=1.5, resolution=1.12, min_rate=10, max_rate=1000)
    found, order = search(true_capacity, plan)
    assert order[0] == 50
    assert found["qps"] <= true_capacity < found["qps"] * plan.resolution
    assert not found["at_least"]


def test_start_failing_goes_down_and_nothing_passing_is_zero():
    plan = SearchPlan(start=50, min_rate=10)
    found, order = search(22.0, plan)
    assert order[:3] == [50, 25, 12.5]
    assert found["qps"] <= 22.0 < found["qps"] * plan.resolution
    found, _ = search(5.0, plan)
    assert found["qps"] == 0 and found["first_failing_qps"] == 10


def test_top_of_range_is_a_lower_bound():
    found, _ = search(10_000.0, SearchPlan(max_rate=400))
    assert found == {"qps": 400, "at_least": True, "first_failing_qps": None}


def test_noisy_pass_above_a_failure_is_not_the_capacity():
    plan = SearchPlan(resolution=1.2)
    passed = {50.0: True, 75.0: False, 112.5: True}
    assert capacity(passed, plan)["qps"] == 50.0
    assert 50 < next_rate(passed, plan) < 75
