"""Reports name their code: dirty trees are refused, and the README tables come from the
report by script (bench.provenance, bench.readme_table), on a throw-away git repository."""

import json
import subprocess

import pytest

from bench import readme_table
from bench.provenance import ProvenanceError, check_report_matches_head, git_state, require_clean


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "bench@example.invalid")
    git(tmp_path, "config", "user.name", "bench")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("# r\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def fake_report(state: dict) -> dict:
    cost = [{"arch": a, "model": m, "seq_len": 1000, "server_cpu_ms_per_request": ms,
             "mflop_per_request": f, "generator_cpu_ms_per_request": 1.5, "unsaturated": True}
            for a, m, ms, f in (("A", "dien", 42.0, 164.6), ("B", "dien", 6.0, 149.1),
                                ("B", "mimn", 2.0, 23.0))]
    capacity = [{"arch": a, "model": m, "seq_len": 1000, "slo_ms": slo, "capacity_qps": q,
                 "at_least": False}
                for a, m, slo, q in (("A", "dien", 10.0, 0.0), ("B", "dien", 10.0, 120.0),
                                     ("B", "mimn", 10.0, 400.0), ("A", "dien", 30.0, 0.0),
                                     ("B", "dien", 30.0, 250.0), ("B", "mimn", 30.0, 600.0))]
    return {"provenance": {"git": state, "machine": {"cpu": "test cpu", "cores": 2},
                           "command": "python -m bench"},
            "summary": {"total_seconds": 1.0}, "cost": cost, "capacity": capacity}


def test_dirty_tree_is_refused(repo):
    require_clean(git_state(repo))
    (repo / "code.py").write_text("x = 2\n")
    state = git_state(repo)
    assert state["dirty"] and state["dirty_files"] == ["code.py"]
    with pytest.raises(ProvenanceError, match="--allow-dirty"):
        require_clean(state)


def test_result_files_do_not_make_the_tree_dirty(repo):
    (repo / "bench_results").mkdir()
    (repo / "bench_results" / "report.json").write_text("{}")
    (repo / "README.md").write_text("changed\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_new.py").write_text("def test_new(): pass\n")
    assert not git_state(repo)["dirty"]


def test_report_must_be_from_heads_code(repo):
    report = fake_report(git_state(repo))
    check_report_matches_head(report, repo)
    (repo / "README.md").write_text("results only\n")  # a results-only commit is fine
    git(repo, "commit", "-q", "-am", "results")
    check_report_matches_head(report, repo)
    (repo / "code.py").write_text("x = 3\n")
    git(repo, "commit", "-q", "-am", "code")
    with pytest.raises(ProvenanceError, match="code changed"):
        check_report_matches_head(report, repo)
    dirty = fake_report({**git_state(repo), "dirty": True, "dirty_files": ["code.py"]})
    with pytest.raises(ProvenanceError, match="dirty"):
        check_report_matches_head(dirty, repo)


def test_readme_table_is_generated_between_the_markers(repo):
    report_path = repo / "report.json"
    report_path.write_text(json.dumps(fake_report(git_state(repo))))
    assert readme_table.main(["--report", str(report_path), "--files", "README.md",
                              "--repo", str(repo)]) == 0
    text = (repo / "README.md").read_text()
    assert text.startswith("# r\n\n<!-- bench:start -->\n") and "old" not in text
    assert "| 1000 | 10 ms | 0 | 120 | 400 | A: none |" in text
    assert "| 1000 | 30 ms | 0 | 250 | 600 | A: none |" in text
    assert "| 1000 | 42.0 (165) | 6.0 (149) | 2.0 (23.0) | 7.0x |" in text
    assert git_state(repo)["commit"][:12] in text


def test_readme_table_refuses_a_report_from_other_code(repo):
    report_path = repo / "report.json"
    report_path.write_text(json.dumps(fake_report(git_state(repo))))
    (repo / "code.py").write_text("x = 4\n")
    git(repo, "commit", "-q", "-am", "code")
    before = (repo / "README.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        readme_table.main(["--report", str(report_path), "--files", "README.md",
                           "--repo", str(repo)])
    assert exit_info.value.code == 2
    assert (repo / "README.md").read_text() == before
    assert readme_table.main(["--report", str(report_path), "--files", "README.md",
                              "--repo", str(repo), "--allow-mismatch"]) == 0
    assert "not from the code at HEAD" in (repo / "README.md").read_text()


def test_missing_markers_is_an_error():
    with pytest.raises(ValueError, match="bench:start"):
        readme_table.replace_between_markers("no markers here", "body")


def test_report_names_its_commit_at_the_top(tmp_path):
    from bench.report import write_report

    origin = {"git": {"commit": "abc123", "dirty": False, "dirty_files": []},
              "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1.0, "python": "3.11",
                          "platform": "linux", "hostname": "h"},
              "command": "python -m bench", "started_at": "2026-01-01T00:00:00+00:00"}
    write_report(tmp_path, {}, {}, {}, origin)
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["commit"], report["dirty"]) == ("abc123", False)
    assert report["provenance"] == origin
