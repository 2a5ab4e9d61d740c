"""Where a report comes from: the git commit, whether the tree was dirty, the machine, the
command. A figure is only worth citing if it can be traced to the code that produced it,
so `python -m bench` refuses a dirty tree unless told otherwise, and
`python -m bench.readme_table` refuses a report measured on other code than HEAD's.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Files a benchmark run writes, that only present its results, or that no benchmark runs
# (the tests and the docs): changing them does not change what was measured.
RESULT_PATHS = ("bench_results/", "README.md", "docs/", "tests/")


class ProvenanceError(RuntimeError):
    """The report cannot be traced to clean, current code."""


def _git(*args: str, repo: Path = REPO_ROOT) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ProvenanceError(f"git {' '.join(args)} failed in {repo}: {exc}; benchmarks must "
                              "run from a git checkout so their reports name the commit") from exc
    return done.stdout


def _is_result_path(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in RESULT_PATHS)


def git_state(repo: Path = REPO_ROOT) -> dict:
    """{"commit", "dirty", "dirty_files"}; result and presentation files do not count."""
    commit = _git("rev-parse", "HEAD", repo=repo).strip()
    changed = []
    for line in _git("status", "--porcelain", repo=repo).splitlines():
        path = line[3:].split(" -> ")[-1].strip().strip('"')
        if not _is_result_path(path):
            changed.append(path)
    return {"commit": commit, "dirty": bool(changed), "dirty_files": changed[:50]}


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        import psutil

        memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib,
            "python": platform.python_version(), "platform": platform.platform(),
            "hostname": platform.node()}


def provenance(argv: list[str] | None = None, repo: Path = REPO_ROOT) -> dict:
    """Everything a report records about its origin."""
    return {"git": git_state(repo), "machine": machine_info(),
            "command": shlex.join([Path(sys.executable).name, "-m", "bench",
                                   *(sys.argv[1:] if argv is None else argv)]),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds")}


def require_clean(state: dict) -> None:
    """Refuse to benchmark a dirty tree: the report could not name the code it measured."""
    if state["dirty"]:
        files = ", ".join(state["dirty_files"][:10])
        raise ProvenanceError(
            f"the work tree has uncommitted changes ({files}); a report from it could not "
            "be traced to a commit. Commit or stash them, or pass --allow-dirty (the report "
            "then records dirty: true and bench.readme_table refuses it by default)")


def check_report_matches_head(report: dict, repo: Path = REPO_ROOT) -> None:
    """The report must come from a clean tree whose code is HEAD's: its commit is HEAD, or
    an ancestor from which only result and presentation files changed."""
    git = report.get("provenance", {}).get("git")
    if not git:
        raise ProvenanceError("the report records no git provenance; regenerate it with "
                              "`make bench`")
    if git["dirty"]:
        raise ProvenanceError(f"the report was measured on a dirty tree (at {git['commit'][:10]}, "
                              f"changed: {', '.join(git['dirty_files'][:10])}); rerun "
                              "`make bench` on a clean checkout, or pass --allow-mismatch")
    head = _git("rev-parse", "HEAD", repo=repo).strip()
    if git["commit"] == head:
        return
    try:
        _git("merge-base", "--is-ancestor", git["commit"], head, repo=repo)
    except ProvenanceError as exc:
        raise ProvenanceError(f"the report's commit {git['commit'][:10]} is not an ancestor of "
                              f"HEAD {head[:10]}; rerun `make bench`, or pass "
                              "--allow-mismatch") from exc
    changed = [p for p in _git("diff", "--name-only", git["commit"], head, repo=repo).splitlines()
               if not _is_result_path(p)]
    if changed:
        raise ProvenanceError(f"the code changed since the report's commit {git['commit'][:10]} "
                              f"({', '.join(changed[:10])}); rerun `make bench`, or pass "
                              "--allow-mismatch")
