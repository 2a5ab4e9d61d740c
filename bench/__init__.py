"""Benchmarks. `python -m bench` runs every component benchmark and the Architecture A vs B
load test in one process tree and writes bench_results/report.{json,md} and a latency plot.
Each component module exposes `run(quick: bool = False) -> list[dict]`."""
