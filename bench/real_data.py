"""A measured run on a large Taobao-format log: sample building, backfill throughput and Redis
memory per user, against the MIMN paper's storage figure.

1. generate a `UserBehavior.csv`-format log of the public file's shape
   (`tf_models.data.taobao_synth`: Zipf users, items and categories, Taobao's behaviour mix,
   nine days; 10,000,000 lines by default);
2. time `python -m tf_models.data.samples` on it (a child process, defaults as a user would
   run it) and read the child's peak resident memory (ru_maxrss);
3. backfill (`beam_jobs.backfill`, in-process DirectRunner engine, `--max_history` at its
   default: every user's whole history) full-size DIEN and MIMN exports, fp32, into a real
   redis-server (no persistence), for the first `--backfill_users` users of the log (the
   smallest ids, a random sample of activity ranks): users/s and events/s as measured,
   start-up and model load included, never extrapolated;
4. Redis memory per user for DIEN and MIMN in fp32 and fp16: states only (no behaviour lists)
   of `--memory_users` users, each configuration in a database of its own; `MEMORY USAGE` and
   `STRLEN` of a sample of state keys, and the growth of INFO `used_memory` per user.

Writes bench_results/real_data.json (with the commit and dirty flag) and prints a table.

    python -m bench.real_data [--lines N] [--backfill_users N] [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ("dien", "mimn")
DTYPES = ("fp32", "fp16")
# MIMN paper (KDD 2019, section 5): "from 6T to 2.7T" of storage for more than 600 M users
PAPER_STORAGE_BYTES = 2.7e12
PAPER_USERS = 600e6
PAPER_BYTES_PER_USER = PAPER_STORAGE_BYTES / PAPER_USERS  # 4,500 bytes


@dataclasses.dataclass(frozen=True)
class Plan:
    lines: int = 10_000_000
    backfill_users: int = 10_000  # 0: every user of the log
    memory_users: int = 10_000  # states copied per model and dtype for the memory figures
    key_sample: int = 300  # state keys measured with MEMORY USAGE per configuration
    quick: bool = False  # tiny exports, no progress bars

    @classmethod
    def quick_plan(cls, lines: int | None = None) -> Plan:
        return cls(lines=lines or 20_000, backfill_users=60, memory_users=60, key_sample=40,
                   quick=True)


@contextmanager
def _keys_progress(client, db: int, total: int, desc: str, enabled: bool):
    """A tqdm bar of the keys in `db` while a backfill (which reports nothing) writes them."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    done = threading.Event()
    bar = tqdm(total=total, desc=desc, unit=" keys", file=sys.stderr)

    def poll():
        while not done.wait(1.0):
            keys = client.info("keyspace").get(f"db{db}", {}).get("keys", 0)
            bar.update(max(0, min(keys, total) - bar.n))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def _generate(csv: Path, plan: Plan) -> dict:
    from tf_models.data.taobao_synth import TaobaoShape, write_taobao_csv

    started = time.perf_counter()
    info = write_taobao_csv(csv, TaobaoShape(lines=plan.lines), progress=not plan.quick)
    info["seconds"] = round(time.perf_counter() - started, 2)
    info["bytes"] = csv.stat().st_size
    return info


def _build_samples(csv: Path, out: Path, plan: Plan) -> dict:
    """Run the samples command as a child process; its wall time and peak RSS."""
    cmd = [sys.executable, "-m", "tf_models.data.samples", "--log", str(csv), "--out", str(out)]
    if plan.quick:
        cmd.append("--no_progress")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = out.parent / "samples.stdout"
    started = time.perf_counter()
    with log.open("w") as stdout:
        child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited with {child.returncode}; its output is "
                           f"in {log}")
    summary = json.loads((out / "samples.json").read_text())["summary"]
    keep = ("lines", "events", "malformed", "outside_window", "users", "items", "categories",
            "users_with_samples", "samples_train", "samples_eval", "sorted_runs")
    return {"command": "python -m tf_models.data.samples --log LOG --out DIR",
            "seconds": round(seconds, 1), "lines_per_s": round(summary["lines"] / seconds),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
            **{k: summary[k] for k in keep}}


def _user_prefix(csv: Path, users: int, out: Path) -> dict:
    """The lines of the `users` smallest user ids (all users when 0 or more than there are),
    in file order; works on any Taobao CSV, sorted by user or not."""
    with csv.open() as f:
        ids = {int(line.split(",", 1)[0]) for line in f if line.strip()}
    chosen = set(sorted(ids)[:users]) if 0 < users < len(ids) else ids
    lengths: dict[int, int] = {}
    with csv.open() as f, out.open("w") as w:
        for line in f:
            if line.strip():
                user = int(line.split(",", 1)[0])
                if user in chosen:
                    w.write(line)
                    lengths[user] = lengths.get(user, 0) + 1
    per_user = np.array(list(lengths.values()))
    return {"users": len(chosen), "users_in_log": len(ids), "events": int(per_user.sum()),
            "events_per_user_mean": round(float(per_user.mean()), 1),
            "events_per_user_p50": int(np.percentile(per_user, 50)),
            "events_per_user_p99": int(np.percentile(per_user, 99)),
            "events_per_user_max": int(per_user.max()), "user_ids": sorted(chosen)}


def _export(root: Path, quick: bool) -> None:
    """Tower exports (version 1) of both models: full size, tiny with --quick."""
    from tf_models.config import ModelConfig
    from tf_models.export import export_model

    config = ModelConfig.tiny() if quick else ModelConfig()
    for model in MODELS:
        export_model(model, root, 1, config=config, seed=1, parts=("tower",))


def _db_url(url: str, db: int) -> str:
    return f"{url.rsplit('/', 1)[0]}/{db}"


def _backfill(server_url: str, db: int, model: str, log: Path, exports: Path, work: Path,
              users: int, plan: Plan) -> dict:
    """One timed backfill run with the job's defaults (fp32, whole histories, behaviour
    lists) into database `db`."""
    from beam_jobs.backfill import BackfillOptions, run_backfill
    from uic.store import StoreConfig, open_redis

    client = open_redis(server_url)
    total = 2 * users + 2  # a state and a behaviour list per user, cold start, active pointer
    with _keys_progress(client, db, total, f"backfill {model}", not plan.quick):
        res = run_backfill(BackfillOptions(
            model=model, events=[str(log)], saved_models=str(exports), version=1,
            store=StoreConfig(url=_db_url(server_url, db)),
            dead_letter=str(work / f"dead-{model}.jsonl")))
    client.close()
    n_users, n_events = res.totals["users"], res.totals["events"]
    return {"model": model, "dtype": "fp32", "db": db, "users": n_users, "events": n_events,
            "max_history": None, "batch_size": 64, "seconds": round(res.seconds, 2),
            "users_per_s": round(n_users / res.seconds, 1),
            "events_per_s": round(n_events / res.seconds, 1),
            "states_written": res.totals["states_written"]}


def _key_bytes(server_url: str, db: int, keys: list[str], length: str) -> dict:
    """Mean MEMORY USAGE (every element sampled) and mean `length` (STRLEN for a state,
    ZCARD for a behaviour list) of `keys` in database `db`."""
    from uic.store import open_redis

    client = open_redis(_db_url(server_url, db))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.execute_command(length, key)
    replies = pipe.execute()
    client.close()
    usage, lengths = replies[0::2], replies[1::2]
    missing = sum(u is None for u in usage)
    if missing:
        raise RuntimeError(f"{missing} of {len(keys)} sampled keys are missing from db {db}: "
                           "the backfill did not write them")
    return {"keys": len(keys), "memory_usage_mean": round(float(np.mean(usage)), 1),
            "length_mean": round(float(np.mean(lengths)), 1)}


def _memory(server_url: str, source_db: dict[str, int], users: list[int], plan: Plan
            ) -> list[dict]:
    """Bytes per user of each model's states in each dtype. The states the backfill wrote
    (fp32) are copied through the store (`write_states`, which encodes in the target dtype,
    as a backfill with that dtype would) into a database of their own, so that the growth
    of `used_memory` is theirs alone: it is read as the drop when that database is flushed."""
    from uic.store import StoreConfig, open_redis

    subset = users[:plan.memory_users]
    admin = open_redis(server_url)
    rows = []
    for db, (model, dtype) in enumerate(((m, d) for m in MODELS for d in DTYPES), start=10):
        source = StoreConfig(url=_db_url(server_url, source_db[model])).connect()
        target = StoreConfig(url=_db_url(server_url, db), dtype=dtype).connect()
        floats = 0
        for i in range(0, len(subset), 500):
            chunk = subset[i:i + 500]
            states = source.read_states(model, 1, chunk)
            floats = max([floats] + [s.state.size for s in states if s is not None])
            target.write_states(model, 1, [
                (u, s.state, s.events_applied, s.last_event_time_ms, s.last_event_id)
                for u, s in zip(chunk, states, strict=True) if s is not None])
        sizes = _key_bytes(server_url, db, [target.state_key(model, 1, u)
                                            for u in subset[:plan.key_sample]], "STRLEN")
        filled = admin.info("memory")["used_memory"]
        target.client.flushdb()  # synchronous: the memory is back when it returns
        emptied = admin.info("memory")["used_memory"]
        source.client.close()
        target.client.close()
        rows.append({"model": model, "dtype": dtype, "users": len(subset),
                     "state_floats": floats,
                     "value_bytes": sizes["length_mean"],
                     "memory_usage_bytes": sizes["memory_usage_mean"],
                     "used_memory_per_user": round((filled - emptied) / len(subset), 1),
                     "keys_sampled": sizes["keys"],
                     "vs_paper": round(sizes["memory_usage_mean"] / PAPER_BYTES_PER_USER, 3)})
    admin.close()
    return rows


def run(plan: Plan | None = None, *, workdir: Path | None = None,
        out: Path | None = REPO / "bench_results" / "real_data.json",
        exports: Path | None = None, argv: list[str] | None = None) -> dict:
    """The whole measurement; returns the report (also written to `out` unless None).
    `exports`: an export root holding version 1 of both towers (default: export them)."""
    from bench.provenance import provenance
    from devkit.redis_server import EmbeddedRedis
    from uic.store import StoreConfig

    plan = plan or Plan()
    origin = provenance(argv)
    origin["command"] = shlex.join(["python", "-m", "bench.real_data",
                                    *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    load_before = os.getloadavg()  # the timings are only as quiet as the machine was
    with tempfile.TemporaryDirectory(prefix="bench_real_data_", dir=workdir) as tmp:
        work = Path(tmp)
        print(f"generating {plan.lines:,} lines in Taobao format", file=sys.stderr, flush=True)
        csv = work / "UserBehavior.csv"
        generated = _generate(csv, plan)
        print("building samples (python -m tf_models.data.samples)", file=sys.stderr, flush=True)
        samples = _build_samples(csv, work / "samples", plan)
        prefix_log = work / "prefix.csv"
        prefix = _user_prefix(csv, plan.backfill_users, prefix_log)
        user_ids = prefix.pop("user_ids")
        if exports is None:
            exports = work / "exports"
            _export(exports, plan.quick)
        backfills: list[dict] = []
        with EmbeddedRedis(ephemeral=True, data_dir=work / "redis") as server:
            for db, model in enumerate(MODELS, start=1):
                backfills.append(_backfill(server.url, db, model, prefix_log, exports, work,
                                           prefix["users"], plan))
            names = StoreConfig(url=server.url).connect(check=False)  # key names only
            behaviours = _key_bytes(server.url, 1, [
                names.behaviour_key(u) for u in user_ids[:plan.key_sample]], "ZCARD")
            names.client.close()
            memory = _memory(server.url, {m: db for db, m in enumerate(MODELS, start=1)},
                             user_ids, plan)
    report = {
        "commit": origin["git"]["commit"], "dirty": origin["git"]["dirty"],
        "provenance": origin,
        "plan": dataclasses.asdict(plan),
        "generated": {k: v for k, v in generated.items() if k != "path"},
        "samples": samples,
        "backfill_prefix": prefix,
        "backfill": backfills,
        "behaviour_lists": behaviours,
        "memory": memory,
        "paper": {"storage_bytes": PAPER_STORAGE_BYTES, "users": PAPER_USERS,
                  "bytes_per_user": PAPER_BYTES_PER_USER},
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_average_1_5_15": {"start": [round(x, 2) for x in load_before],
                                "end": [round(x, 2) for x in os.getloadavg()]},
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    return report


def print_report(r: dict) -> None:
    g, s, p = r["generated"], r["samples"], r["backfill_prefix"]
    print(f"\nReal-data run: {g['lines']:,} Taobao-format lines, {g['users']:,} users "
          f"(commit {r['commit'][:10]}{', DIRTY tree' if r['dirty'] else ''}, "
          f"{r['total_seconds']:.0f} s in all)")
    print(f"  generate   {g['seconds']:>8.1f} s  ({g['bytes'] / 2**20:,.0f} MiB)")
    print(f"  samples    {s['seconds']:>8.1f} s  {s['lines_per_s']:>9,} lines/s  peak RSS "
          f"{s['peak_rss_mb']:,.0f} MB  ({s['users_with_samples']:,} users, "
          f"{s['samples_train'] + s['samples_eval']:,} samples)")
    print(f"  backfill of {p['users']:,} of {p['users_in_log']:,} users, {p['events']:,} events "
          f"(per user mean {p['events_per_user_mean']}, p50 {p['events_per_user_p50']}, "
          f"p99 {p['events_per_user_p99']}, max {p['events_per_user_max']}); whole histories:")
    for b in r["backfill"]:
        print(f"    {b['model']:<5} {b['dtype']}  {b['seconds']:>8.1f} s  "
              f"{b['users_per_s']:>9,.1f} users/s  {b['events_per_s']:>10,.0f} events/s")
    print(f"  Redis bytes per user (states only; MIMN paper: {r['paper']['bytes_per_user']:,.0f} "
          "bytes = 2.7 TB / 600 M users):")
    print("    model dtype  floats  value  MEMORY USAGE  used_memory/user  vs paper")
    for m in r["memory"]:
        print(f"    {m['model']:<5} {m['dtype']}  {m['state_floats']:>6}  {m['value_bytes']:>5.0f}"
              f"  {m['memory_usage_bytes']:>12,.0f}  {m['used_memory_per_user']:>16,.0f}  "
              f"{m['vs_paper']:>8.2f}")
    bl = r["behaviour_lists"]
    print(f"  Architecture A behaviour list: {bl['memory_usage_mean']:,.0f} bytes per user "
          f"(MEMORY USAGE, {bl['length_mean']:.0f} behaviours on average)")


def markdown_section(r: dict) -> list[str]:
    """The report as markdown lines, for bench_results/report.md and docs/benchmarks.md."""
    g, s, p = r["generated"], r["samples"], r["backfill_prefix"]
    git = f"commit {r['commit'][:12]}{' (DIRTY tree)' if r['dirty'] else ''}"
    lines = [
        f"A generated {g['lines']:,}-line log in Taobao's format ({g['users']:,} users, "
        f"`python -m bench.real_data`, {git}, {r['total_seconds'] / 60:.0f} min in all"
        + (", load average {} at the start and {} at the end".format(
            *(f"{x[0]:.1f}" for x in (r['load_average_1_5_15']['start'],
                                       r['load_average_1_5_15']['end'])))
           if "load_average_1_5_15" in r else "") + ").", "",
        "| step | figure |", "| --- | --- |",
        f"| sample building (`tf_models.data.samples`, defaults) | {s['seconds']:,.0f} s, "
        f"{s['lines_per_s']:,} lines/s, peak RSS {s['peak_rss_mb']:,.0f} MB |",
    ]
    for b in r["backfill"]:
        lines.append(f"| backfill {b['model'].upper()} fp32, whole histories, {p['users']:,} "
                     f"users / {p['events']:,} events | {b['seconds']:,.0f} s, "
                     f"{b['users_per_s']:,.0f} users/s, {b['events_per_s']:,.0f} events/s |")
    lines += ["", f"Redis bytes per user, states only (MIMN paper: "
              f"{r['paper']['bytes_per_user']:,.0f} bytes per user = 2.7 TB / 600 M users):", "",
              "| model | dtype | floats | value bytes | MEMORY USAGE | used_memory / user | "
              "vs paper |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in r["memory"]:
        lines.append(f"| {m['model'].upper()} | {m['dtype']} | {m['state_floats']:,} | "
                     f"{m['value_bytes']:,.0f} | {m['memory_usage_bytes']:,.0f} | "
                     f"{m['used_memory_per_user']:,.0f} | {m['vs_paper']:.2f} |")
    bl = r["behaviour_lists"]
    lines += ["", f"Architecture A's behaviour list for comparison: "
              f"{bl['memory_usage_mean']:,.0f} bytes per user ({bl['length_mean']:.0f} "
              "behaviours on average).", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    d = Plan()
    parser = argparse.ArgumentParser(prog="python -m bench.real_data",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=None,
                        help=f"lines of the generated log ({d.lines:,}; --quick: 20,000)")
    parser.add_argument("--backfill_users", type=int, default=None,
                        help=f"backfill the first N users of the log (smallest ids); 0 = all "
                        f"({d.backfill_users:,})")
    parser.add_argument("--memory_users", type=int, default=None,
                        help=f"users whose states are stored per model and dtype for the memory "
                        f"figures ({d.memory_users:,})")
    parser.add_argument("--quick", action="store_true",
                        help="a 20,000-line log, tiny exports, 60 users (about 30 s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the log and the exports are written (a temporary folder "
                        "inside it, deleted at the end; about 40 bytes per line for the log "
                        "and 400 for the samples)")
    parser.add_argument("--out", type=Path, default=REPO / "bench_results" / "real_data.json",
                        help="report file (bench_results/real_data.json)")
    args = parser.parse_args(argv)
    plan = Plan.quick_plan(args.lines) if args.quick else Plan(lines=args.lines or d.lines)
    overrides = {k: v for k, v in (("backfill_users", args.backfill_users),
                                   ("memory_users", args.memory_users)) if v is not None}
    plan = dataclasses.replace(plan, **overrides)
    if plan.lines < 1 or plan.backfill_users < 0 or plan.memory_users < 1:
        parser.error("--lines and --memory_users must be >= 1 and --backfill_users >= 0")
    run(plan, workdir=args.workdir, out=args.out, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
