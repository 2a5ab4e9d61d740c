"""End to end: the real load generator process, the real client, Redis and model server,
tiny exports, a shortened profile. Checks the accounting and the report fields, not speed."""

from __future__ import annotations

import pytest

from bench import archab
from bench.capacity import SearchPlan


@pytest.mark.slow  # about 100 s on 2 cores: exports, a model server and a spawned generator
def test_quick_archab_run_counts_every_request(tmp_path):
    from tf_models.config import ModelConfig

    profile = archab.Profile(seq_lens=(20,), users_per_len=5, cell_s=0.5, min_requests=10,
                             max_cell_s=1.0, cost_qps=10.0, cost_s=1.0, timeout_s=0.5,
                             search=SearchPlan(start=20.0, factor=4.0, resolution=4.0,
                                               min_rate=10.0, max_rate=80.0))
    result = archab.run(profile=profile, plan=(("A", "dien"), ("B", "mimn")),
                        workdir=tmp_path, model_config=ModelConfig.tiny())

    cells = result["cells"]
    assert [c["phase"] for c in cells[:2]] == ["cost", "cost"]
    for cell in cells:
        counted = cell["n_ok"] + cell["n_timeout"] + cell["n_error"] + cell["n_abandoned"]
        assert counted == cell["scheduled"] == round(cell["qps_target"] * cell["duration_s"])
        assert cell["server_cpu_ms_per_request"] > 0
        assert cell["generator_cpu_ms_per_request"] > 0
    # interleaved: no two consecutive capacity cells of one series while another is pending
    order = [(c["arch"], c["model"]) for c in cells if c["phase"] == "capacity"]
    assert order[:2] == [("A", "dien"), ("B", "mimn")]
    assert {(c["arch"], c["model"], c["slo_ms"]) for c in result["capacity"]} == {
        (a, m, s) for a, m in (("A", "dien"), ("B", "mimn")) for s in archab.SLOS_MS}
    cost = {(c["arch"], c["model"]): c for c in result["cost"]}
    assert cost[("A", "dien")]["mflop_per_request"] > cost[("B", "mimn")]["mflop_per_request"] > 0
    summary = archab.summarize(result)
    assert "A_dien_over_B_mimn_cpu_ms_L20" in summary
