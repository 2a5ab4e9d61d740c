"""bench.batching's comparison rows and their README table (pure logic; the cells
themselves come from bench.archab, tested in test_archab_quick.py)."""

from bench.batching import compare
from bench.readme_table import render


def _result(cpu: dict, cap: dict) -> dict:
    return {"cost": [{"model": m, "server_cpu_ms_per_request": v, "p99_ms": 2 * v}
                     for m, v in cpu.items()],
            "capacity": [{"model": m, "slo_ms": slo, "capacity_qps": q, "at_least": q >= 400}
                         for (m, slo), q in cap.items()]}


def test_rows_pair_each_model_off_and_on_and_reach_the_readme():
    off = _result({"dien": 9.0, "mimn": 4.0},
                  {("dien", 10.0): 0, ("dien", 30.0): 70, ("mimn", 10.0): 50, ("mimn", 30.0): 150})
    on = _result({"dien": 6.0, "mimn": 2.5},
                 {("dien", 10.0): 20, ("dien", 30.0): 120, ("mimn", 10.0): 400, ("mimn", 30.0): 400})
    rows = compare(off, on)
    assert [(r["model"], r["batching"]) for r in rows] == [
        ("dien", "off"), ("dien", "on"), ("mimn", "off"), ("mimn", "on")]
    assert rows[1]["server_cpu_ms_per_request"] == 6.0
    assert rows[0]["capacity_qps_slo30ms"] == "70" and rows[3]["capacity_qps_slo10ms"] == "400+"
    table = render({"components": {"batching": rows}})
    assert "| mimn | on | 2.5 | 400+ | 400+ |" in table
    assert "| dien | off | 9.0 | 0 | 70 |" in table
