"""`make bench`: every benchmark in one run, one report.

    python -m bench [--quick] [--only store,models,server,beam,client,batching,archab]
                    [--allow-dirty]

Component benchmarks (store reads, step vs tower, head vs full, server overhead, backfill,
stream throughput and freshness at 1, 2 and 4 workers, client cost, server-side batching on
against off) run first, one after another so that they do not share the two cores; then the
Architecture A vs B cost and capacity benchmark. Results go to bench_results/report.json
(with the git commit, the machine and the command), report.md and latency.png. A dirty work
tree is refused unless --allow-dirty: a report must name the code it measured.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback
from pathlib import Path

from bench import archab
from bench.provenance import ProvenanceError, provenance, require_clean
from bench.report import write_report

COMPONENTS = ("store", "models", "server", "beam", "client", "batching")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes in all)")
    parser.add_argument("--only", default=",".join(COMPONENTS + ("archab",)),
                        help="comma-separated subset of: " + ", ".join(COMPONENTS + ("archab",)))
    parser.add_argument("--out", default="bench_results", help="report folder (bench_results)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run on a work tree with uncommitted changes (recorded in the report)")
    args = parser.parse_args(argv)
    wanted = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(wanted) - set(COMPONENTS) - {"archab"})
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {COMPONENTS + ('archab',)}")
    try:
        origin = provenance(argv)
        if not args.allow_dirty:
            require_clean(origin["git"])
    except ProvenanceError as exc:
        parser.exit(2, f"error: {exc}\n")

    components: dict[str, list[dict]] = {}
    failures = []
    t0 = time.perf_counter()
    for name in COMPONENTS:
        if name not in wanted:
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        try:
            components[name] = importlib.import_module(f"bench.{name}").run(quick=args.quick)
        except Exception:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            failures.append(name)
    result: dict = {}
    if "archab" in wanted:
        print("\n=== bench.archab (Architecture A vs B: cost and capacity) ===", flush=True)
        try:
            result = archab.run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failures.append("archab")
    summary = archab.summarize(result)
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    if failures:
        summary["failed"] = ",".join(failures)
    paths = write_report(Path(args.out), result, components, summary, origin)
    print(f"\nreport: {paths['json']}, {paths['md']}" + (f", {paths['png']}" if paths["png"] else ""))
    for key, value in summary.items():
        print(f"{key}: {value}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
