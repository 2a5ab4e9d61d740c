"""The real-data section of docs/benchmarks.md comes from bench_results/real_data.json,
and a report from a dirty tree is refused (pure file handling; the run itself is tested in
test_real_data.py)."""

import json

import pytest

from bench.readme_table import REAL_END, REAL_START, write_real_data


def _report(dirty: bool) -> dict:
    return {"commit": "abc1234def5678", "dirty": dirty, "total_seconds": 2400,
            "load_average_1_5_15": {"start": [0.4, 0.5, 0.6], "end": [1.9, 1.5, 1.0]},
            "generated": {"lines": 10_000_000, "users": 98_650},
            "samples": {"seconds": 1500, "lines_per_s": 6667, "peak_rss_mb": 2048},
            "backfill_prefix": {"users": 10_000, "events": 1_020_000},
            "backfill": [{"model": "dien", "seconds": 300, "users_per_s": 33.3,
                          "events_per_s": 3400}],
            "paper": {"bytes_per_user": 4500},
            "memory": [{"model": "mimn", "dtype": "fp16", "state_floats": 649,
                        "value_bytes": 1370, "memory_usage_bytes": 1608,
                        "used_memory_per_user": 1624, "vs_paper": 0.36}],
            "behaviour_lists": {"memory_usage_mean": 9920, "length_mean": 95}}


def test_section_is_written_between_the_markers_and_dirty_reports_refused(tmp_path):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.write_text(f"# B\n\n{REAL_START}\nold\n{REAL_END}\n\ntail\n")
    report = tmp_path / "real_data.json"
    report.write_text(json.dumps(_report(dirty=False)))
    write_real_data(tmp_path, report)
    text = doc.read_text()
    assert "old" not in text and text.endswith("tail\n")
    assert "10,000,000-line log" in text and "commit abc1234def56" in text
    assert "load average 0.4 at the start and 1.9 at the end" in text
    assert "| MIMN | fp16 | 649 |" in text

    report.write_text(json.dumps(_report(dirty=True)))
    with pytest.raises(ValueError, match="dirty tree"):
        write_real_data(tmp_path, report)
