"""Write the benchmark results tables into README.md and docs/benchmarks.md from
bench_results/report.json, so that no figure is ever typed in by hand.

    python -m bench.readme_table [--report bench_results/report.json] [--allow-mismatch]

The tables go between the lines `<!-- bench:start -->` and `<!-- bench:end -->` of each
file (a file without the markers is an error). The report must come from a clean tree
whose code is HEAD's (bench.provenance.check_report_matches_head); --allow-mismatch writes
the tables anyway and says so in them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bench.provenance import REPO_ROOT, ProvenanceError, check_report_matches_head

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
REAL_START, REAL_END = "<!-- real_data:start -->", "<!-- real_data:end -->"
DEFAULT_FILES = ("README.md", "docs/benchmarks.md")
COLUMNS = (("A", "dien", "A: DIEN full"), ("B", "dien", "B: DIEN head"),
           ("B", "mimn", "B: MIMN head"))


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}"


def _qps(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


def _ratio(num, den) -> str:
    if num is None or den is None or num != num or den != den:
        return "-"
    if not den:
        return "A: none" if num else "-"
    return f"{num / den:,.1f}x"


def render(report: dict, note: str = "") -> str:
    """The markdown between the markers: capacity, cost, and where the figures come from."""
    cost = {(c["arch"], c["model"], c["seq_len"]): c for c in report.get("cost", [])}
    cap = {(c["arch"], c["model"], c["seq_len"], c["slo_ms"]): c
           for c in report.get("capacity", [])}
    lens = sorted({k[2] for k in cost} | {k[2] for k in cap})
    slos = sorted({k[3] for k in cap})
    lines = []
    if note:
        lines += [f"**{note}**", ""]
    lines += ["Capacity: the highest offered rate (QPS, open loop, 100 candidates) whose p99 "
              "over all scheduled requests stays within the SLO with under 1 % failures "
              "(\"+\": the top of the search range still passed).", "",
              "| L | SLO | " + " | ".join(c[2] for c in COLUMNS) + " | B/A (DIEN) |",
              "| --- | --- |" + " --- |" * (len(COLUMNS) + 1)]
    for seq_len in lens:
        for slo in slos:
            row = []
            for arch, model, _ in COLUMNS:
                c = cap.get((arch, model, seq_len, slo))
                row.append("-" if c is None else _qps(c["capacity_qps"]) + ("+" if c["at_least"]
                                                                            else ""))
            a, b = cap.get(("A", "dien", seq_len, slo)), cap.get(("B", "dien", seq_len, slo))
            ratio = _ratio(b and b["capacity_qps"], a and a["capacity_qps"])
            lines.append(f"| {seq_len} | {slo:g} ms | " + " | ".join(row) + f" | {ratio} |")
    lines += ["", "Cost: model-server CPU-ms per request in an unsaturated cell, and the "
              "request's FLOPs (estimate, see 'FLOPs per request').", "",
              "| L | " + " | ".join(f"{c[2]} CPU-ms (MFLOP)" for c in COLUMNS)
              + " | A/B (DIEN) |", "| --- |" + " --- |" * (len(COLUMNS) + 1)]
    for seq_len in lens:
        row = []
        for arch, model, _ in COLUMNS:
            c = cost.get((arch, model, seq_len))
            row.append("-" if c is None else f"{_num(c['server_cpu_ms_per_request'])} "
                       f"({_num(c['mflop_per_request'])})" + ("" if c["unsaturated"]
                                                              else " saturated"))
        a, b = cost.get(("A", "dien", seq_len)), cost.get(("B", "dien", seq_len))
        ratio = _ratio(a and a["server_cpu_ms_per_request"], b and b["server_cpu_ms_per_request"])
        lines.append(f"| {seq_len} | " + " | ".join(row) + f" | {ratio} |")
    batching = report.get("components", {}).get("batching") or []
    if batching:
        lines += ["", "Server-side batching (`serving_configs/batching.config`) off and on, "
                  "B at L = 1000, same load (`bench.batching`).", "",
                  "| model | batching | CPU-ms per request | capacity @ 10 ms | capacity @ 30 ms |",
                  "| --- | --- | --- | --- | --- |"]
        for row in batching:
            lines.append(f"| {row['model']} | {row['batching']} | "
                         f"{_num(row['server_cpu_ms_per_request'])} | "
                         f"{row.get('capacity_qps_slo10ms', '-')} | "
                         f"{row.get('capacity_qps_slo30ms', '-')} |")
    gen = [c["generator_cpu_ms_per_request"] for c in report.get("cost", [])]
    origin = report.get("provenance", {})
    machine, git = origin.get("machine", {}), origin.get("git", {})
    lines += ["", f"Load generator (with the client in its process): "
              f"{_num(min(gen)) if gen else '-'} to {_num(max(gen)) if gen else '-'} CPU-ms "
              "per request. "
              f"Generated by `python -m bench.readme_table` from bench_results/report.json: "
              f"commit {git.get('commit', '?')[:12]}, `{origin.get('command', '?')}`, "
              f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
              f"{report.get('summary', {}).get('total_seconds', '?')} s."]
    return "\n".join(lines)


def replace_between_markers(text: str, body: str, source: str = "file", start: str = START,
                            end: str = END) -> str:
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{source} has no '{start}' ... '{end}' block; add the two marker "
                         "lines where the benchmark tables belong")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text, count=1)


def write_real_data(repo: Path, path: Path) -> str:
    """docs/benchmarks.md's real-data section from `python -m bench.real_data`'s report.
    That run takes most of an hour and is not part of `make bench`, so its section names
    its own commit instead of having to match HEAD; a dirty-tree report is refused."""
    from bench.real_data import markdown_section

    report = json.loads(path.read_text())
    if report.get("dirty", True):
        raise ValueError(f"{path} was measured on a dirty tree (or records no commit); rerun "
                         "`python -m bench.real_data` on a clean checkout")
    doc = repo / "docs" / "benchmarks.md"
    doc.write_text(replace_between_markers(doc.read_text(), "\n".join(markdown_section(report)),
                                           str(doc), REAL_START, REAL_END))
    return str(doc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default=str(REPO_ROOT / "bench_results" / "report.json"))
    parser.add_argument("--files", default=",".join(DEFAULT_FILES),
                        help="comma-separated files to update, relative to the repository")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="write the tables even if the report is not from HEAD's clean code")
    parser.add_argument("--repo", default=str(REPO_ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repo = Path(args.repo)
    report = json.loads(Path(args.report).read_text())
    note = ""
    try:
        check_report_matches_head(report, repo)
    except ProvenanceError as exc:
        if not args.allow_mismatch:
            parser.exit(2, f"error: {exc}\n")
        note = f"These figures are not from the code at HEAD: {exc}"
    body = render(report, note)
    for name in (f for f in args.files.split(",") if f):
        path = repo / name
        try:
            path.write_text(replace_between_markers(path.read_text(), body, str(path)))
        except (OSError, ValueError) as exc:
            parser.exit(2, f"error: {exc}\n")
        print(f"updated {path}")
    real = repo / "bench_results" / "real_data.json"
    if real.exists():
        try:
            print(f"updated {write_real_data(repo, real)} (real-data section)")
        except (OSError, ValueError) as exc:
            parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
