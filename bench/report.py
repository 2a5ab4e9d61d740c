"""Writing benchmark results: one JSON report, a markdown summary and the latency plot.

Kept apart from the measurements so that every benchmark returns plain records and this
module alone decides how they are presented.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bench.latency import percentiles_ms  # noqa: F401  (the component benchmarks import it here)

CAPACITY_KEYS = ("arch", "model", "seq_len", "slo_ms", "capacity_qps", "at_least",
                 "first_failing_qps")
COST_KEYS = ("arch", "model", "seq_len", "server_cpu_ms_per_request", "mflop_per_request",
             "gflops_per_server_cpu_s", "generator_cpu_ms_per_request", "p99_ms", "unsaturated")
CELL_KEYS = ("phase", "arch", "model", "seq_len", "qps_target", "scheduled", "error_rate",
             "goodput_qps", "p50_ms", "p95_ms", "p99_ms", "ok_p99_ms", "saturated",
             "server_cpu_ms_per_request", "generator_cpu_ms_per_request", "send_lag_p99_ms")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown_table(records: Sequence[dict], keys: Sequence[str] | None = None) -> str:
    if not records:
        return "_no records_\n"
    if keys is None:
        keys = []
        for rec in records:
            keys.extend(k for k in rec if k not in keys)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for rec in records:
        lines.append("| " + " | ".join(_fmt(rec.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot_latency(cells: Sequence[dict], slos_ms: Sequence[float], path: Path) -> Path | None:
    """p99 over all scheduled requests against the offered rate of the capacity cells, one
    line per (arch, model, L), with the SLOs drawn across."""
    cells = [c for c in cells if c.get("phase") == "capacity"]
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple, list[dict]] = {}
    for cell in cells:
        series.setdefault((cell["arch"], cell["model"], cell["seq_len"]), []).append(cell)
    lengths = sorted({key[2] for key in series})
    colors = dict(zip(lengths, ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple"),
                      strict=False))
    styles = {("A", "dien"): ("--", "s"), ("B", "dien"): ("-", "o"), ("B", "mimn"): (":", "^")}
    for (arch, model, seq_len), rows in sorted(series.items()):
        rows = sorted(rows, key=lambda r: r["qps_target"])
        line, marker = styles.get((arch, model), ("-.", "x"))
        ax.plot([r["qps_target"] for r in rows], [r["p99_ms"] for r in rows], linestyle=line,
                marker=marker, color=colors.get(seq_len), label=f"{arch} {model} L={seq_len}")
    for slo in slos_ms:
        ax.axhline(slo, color="grey", linewidth=0.8)
        ax.annotate(f"SLO {slo:g} ms", (ax.get_xlim()[0], slo), fontsize=7, color="grey")
    ax.set_xlabel("offered rate (QPS, open loop)")
    ax.set_ylabel("p99 of all scheduled requests (ms, log scale)")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_title("Architecture A (full model) vs B (UIC state + head), 100 candidates")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: Path, archab: dict, components: dict[str, list[dict]],
                 summary: dict, provenance: dict) -> dict[str, Path]:
    """bench_results/report.json (provenance, A/B cost, capacity and cells, components,
    summary), report.md and latency.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # the commit and cleanliness first, where a reader (or a check) looks for them; the
    # provenance block keeps the details (dirty files, machine, command)
    report = {"commit": provenance["git"]["commit"], "dirty": provenance["git"]["dirty"],
              "provenance": provenance, "summary": summary,
              "archab_settings": archab.get("settings", {}),
              "cost": archab.get("cost", []), "capacity": archab.get("capacity", []),
              "cells": archab.get("cells", []), "components": components}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=float))
    slos = archab.get("settings", {}).get("slos_ms", [])
    plot_path = plot_latency(report["cells"], slos, out_dir / "latency.png")
    machine, git = provenance["machine"], provenance["git"]
    md = ["# Benchmark report", "",
          f"Commit {git['commit'][:12]}{' (DIRTY tree)' if git['dirty'] else ''}; "
          f"`{provenance['command']}` started {provenance['started_at']}.", "",
          f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
          f"Python {machine['python']}.", ""]
    if summary:
        md += ["## Headline", "", markdown_table([{"figure": k, "value": v}
                                                  for k, v in summary.items()]), ""]
    if report["capacity"]:
        md += ["## Capacity: highest offered rate meeting the SLO (p99 of all requests, "
               "< 1 % failures)", "", markdown_table(report["capacity"], CAPACITY_KEYS), ""]
    if report["cost"]:
        md += ["## Cost: model-server CPU per request (unsaturated cell)", "",
               markdown_table(report["cost"], COST_KEYS), ""]
    if report["cells"]:
        md += ["## Every cell, in the order run", "", markdown_table(report["cells"], CELL_KEYS),
               ""]
        if plot_path:
            md += ["![latency](latency.png)", ""]
    for name, records in components.items():
        kinds = list(dict.fromkeys(r.get("bench", name) for r in records))
        for kind in kinds:  # bench.beam mixes backfill, stream cells and job counters
            title = name if len(kinds) == 1 else f"{name}: {kind}"
            md += [f"## {title}", "", markdown_table(
                [r for r in records if r.get("bench", name) == kind]), ""]
    real = out_dir / "real_data.json"
    if real.exists():  # `python -m bench.real_data`, run on its own (most of an hour)
        from bench.real_data import markdown_section

        md += ["## Real data: a large Taobao-format log (its own run and commit)", "",
               *markdown_section(json.loads(real.read_text()))]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))
    return {"json": json_path, "md": md_path, "png": plot_path}
