"""Benchmarks. `python -m bench` runs every component benchmark and the Architecture A vs B
cost and capacity benchmark in one process tree and writes bench_results/report.{json,md}
and a latency plot; `python -m bench.readme_table` puts the headline table into README.md
and docs/benchmarks.md from that report. Each component module exposes
`run(quick: bool = False) -> list[dict]`."""
