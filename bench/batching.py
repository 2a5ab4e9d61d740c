"""Server-side batching on against off: the same Architecture B cells at L = 1000, run
against a model server without batching and then against one with
`serving_configs/batching.config` (what `make serve` and `make deploy` use).

Each half is a complete `bench.archab` run for B (DIEN and MIMN heads) at one length: an
unsaturated cost cell (server CPU-ms per request) and the capacity search per SLO. The two
halves share the exports and the Redis data, and run one after the other on the idle machine.
`python -m bench.batching [--quick]`.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from bench import archab
from bench.report import markdown_table

REPO = Path(__file__).resolve().parents[1]
BATCHING_ARGS = ("--enable_batching",
                 f"--batching_parameters_file={REPO / 'serving_configs' / 'batching.config'}")
PLAN = (("B", "dien"), ("B", "mimn"))
SEQ_LEN = 1000


def compare(off: dict, on: dict) -> list[dict]:
    """One row per (model, figure): the figure with batching off and on."""
    rows = []
    for model in sorted({m for _, m in PLAN}):
        for name, result in (("off", off), ("on", on)):
            cost = next(c for c in result["cost"] if c["model"] == model)
            row = {"model": model, "seq_len": SEQ_LEN, "batching": name,
                   "server_cpu_ms_per_request": cost["server_cpu_ms_per_request"],
                   "cost_p99_ms": cost["p99_ms"]}
            for cap in result["capacity"]:
                if cap["model"] == model:
                    bound = "+" if cap["at_least"] else ""
                    row[f"capacity_qps_slo{cap['slo_ms']:g}ms"] = f"{cap['capacity_qps']:g}{bound}"
            rows.append(row)
    return rows


def run(quick: bool = False) -> list[dict]:
    profile = replace(archab.QUICK if quick else archab.FULL, seq_lens=(SEQ_LEN,))
    with tempfile.TemporaryDirectory(prefix="uic-batching-") as tmp:
        results = {name: archab.run(profile=profile, plan=PLAN, workdir=Path(tmp),
                                    server_args=args)
                   for name, args in (("off", ()), ("on", BATCHING_ARGS))}
    rows = compare(results["off"], results["on"])
    print(markdown_table(rows, list(rows[0])))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cells")
    args = parser.parse_args(argv)
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
