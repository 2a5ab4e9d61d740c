"""Writing benchmark results: one JSON report, a markdown summary and the latency plot.

Kept apart from the measurements so that every benchmark returns plain records and this
module alone decides how they are presented.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CELL_KEYS = (
    "arch", "model", "seq_len", "qps_target", "qps_achieved",
    "p50_ms", "p95_ms", "p99_ms", "errors", "candidates",
)


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


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


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


def plot_latency(cells: Sequence[dict], path: Path) -> Path | None:
    """p99 latency against target QPS, one line per (arch, model, L)."""
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
    ax.set_xlabel("target QPS (open loop)")
    ax.set_ylabel("p99 latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title("Architecture A (full model) vs B (UIC state + head), 100 candidates")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: Path, cells: list[dict], components: dict[str, list[dict]],
                 summary: dict) -> dict[str, Path]:
    """bench_results/report.json (cells + components + summary), report.md, latency.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "summary": summary, "cells": cells,
              "components": components}
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, default=float))
    plot_path = plot_latency(cells, out_dir / "latency.png")
    md = ["# Benchmark report", "", f"Machine: {report['machine']['cpu']}, "
          f"{report['machine']['cores']} cores, Python {report['machine']['python']}", ""]
    if summary:
        md += ["## Headline", "", markdown_table([{"figure": k, "value": v}
                                                  for k, v in summary.items()]), ""]
    if cells:
        md += ["## Architecture A vs B (open loop, 100 candidates)", "",
               markdown_table(cells, list(CELL_KEYS) + ["ab_p99_ratio"]), ""]
        if plot_path:
            md += ["![latency](latency.png)", ""]
    for name, records in components.items():
        md += [f"## {name}", "", markdown_table(records), ""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))
    return {"json": json_path, "md": md_path, "png": plot_path}
