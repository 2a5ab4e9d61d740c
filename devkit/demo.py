"""`make demo`: the whole system end to end, in one command, on built-in synthetic data or
on a real behaviour log (`--data UserBehavior.csv`, Taobao's format, or events JSONL).

Steps: start an embedded Redis -> behaviour logs: synthetic ones, or training samples built
from the log (`tf_models.data.samples`) -> train small DIEN, MIMN and the Embedding&MLP
baseline -> export version 1 -> start the model server with the generated models.config ->
backfill every user's interest state with the Beam batch job (on a real log: all but its
last `--tail_events` events) -> start the Beam streaming jobs -> push live events (on a real
log: its tail, as it happened) and show scores move -> score requests through the client
both ways (A: behaviours + full model, B: state + head) -> stop everything it started.

Every step runs the same CLI a user would run (shown before it runs), so the demo doubles
as a walkthrough of the commands in the README.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from redis.exceptions import ResponseError
from rich.console import Console
from rich.table import Table

from devkit.processes import ChildProcess, ProcessStartError
from devkit.redis_server import EmbeddedRedis, EmbeddedRedisError
from uic.contract import MODELS, SEQUENCE_MODELS, serving_model_name

console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
# TensorFlow's C++ start-up chatter (absl logs cannot be silenced by TF_CPP_MIN_LOG_LEVEL in
# TF 2.21) and Beam's optional-module warnings: filtered from the demo's output only.
NOISE = re.compile(rb"^(WARNING: All log messages before absl|[IWE]0000 \d|To enable the following "
                   rb"instructions|WARNING:root:(apitools not found|Resource module))")
PY = sys.executable
STREAM_JOB_READY_S = 300.0
"""How long a streaming job may take to start (import Beam and TensorFlow, load the step
model, create its consumer group) on a slow two-core machine."""


class DemoError(RuntimeError):
    """A demo step failed; the message names the step (its output was shown above)."""


def _env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def run_cli(title: str, args: list[str], *, quiet: bool = False) -> None:
    """Run `python -m ...` in the foreground, echoing the command and its output."""
    console.rule(f"[bold cyan]{title}")
    console.print(f"[dim]$ python {shlex.join(args)}[/dim]")
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    kept = _copy_filtered(proc.stdout, None if quiet else sys.stdout.buffer)
    if proc.wait() != 0:
        if quiet:
            sys.stdout.buffer.write(kept[-4000:])
        raise DemoError(f"step failed ({title}): exit code {proc.returncode}")
    console.print(f"[green]done in {time.perf_counter() - t0:.1f} s[/green]")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow (pulled in by the model-server config helpers) with file descriptor 2
    pointed at /dev/null, so its C++ start-up chatter does not land in the middle of a step."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def _copy_filtered(stream, out) -> bytes:
    """Copy a child's output to `out` as it comes (progress bars included, since segments end
    at \\r as well as \\n), dropping NOISE lines; returns what was kept."""
    kept, pending = bytearray(), b""
    while chunk := stream.read1(65536):
        pending += chunk
        parts = re.split(rb"(?<=[\r\n])", pending)
        pending = parts.pop()
        for part in parts:
            if not NOISE.match(part):
                kept += part
                if out is not None:
                    out.write(part)
                    out.flush()
    if pending and not NOISE.match(pending):
        kept += pending
        if out is not None:
            out.write(pending)
            out.flush()
    return bytes(kept)


def consumer_group_exists(client, stream: str, group: str) -> bool:
    """True once `group` is a consumer group of `stream` (XINFO GROUPS)."""
    try:
        groups = client.xinfo_groups(stream)
    except ResponseError:  # the stream does not exist yet
        return False
    return any(g["name"] in (group, group.encode()) for g in groups)


def start_stream_job(model: str, exports: Path, redis_url: str, logs: Path) -> ChildProcess:
    """Start `beam_jobs.stream` for `model` in the background, reading new entries only
    (`$`) with its own consumer group `uic-<model>`. It stops on SIGINT (its Ctrl-C
    handling), then SIGKILL."""
    from beam_jobs import DEFAULT_STREAM

    args = ["-m", "beam_jobs.stream", "--model", model, "--saved_models", str(exports),
            "--redis_url", redis_url, "--stream", DEFAULT_STREAM, "--group", f"uic-{model}",
            "--start_id", "$", "--stop_after_seconds", "900"]
    log_path = logs / f"stream-{model}.log"
    console.print(f"[dim]$ python {shlex.join(args)} &  (log: {log_path})[/dim]")
    return ChildProcess([PY, *args], name=f"stream job for {model}", log_path=log_path,
                        env=_env(), stop_signal=signal.SIGINT).start()


def wait_for_consumer_group(job: ChildProcess, redis_url: str, group: str,
                            timeout: float = STREAM_JOB_READY_S) -> None:
    """Return once `job` has created `group` on the event stream: from then on it receives
    every event pushed (a group made with `$` does not see earlier entries). Raises
    ProcessStartError, quoting the job's log, if the job exits or `timeout` passes first."""
    from beam_jobs import DEFAULT_STREAM
    from uic.store import open_redis

    client = open_redis(redis_url)
    try:
        job.wait_until(lambda: consumer_group_exists(client, DEFAULT_STREAM, group),
                       f"consumer group {group!r} on stream {DEFAULT_STREAM!r}", timeout)
    finally:
        client.close()


def read_catalog(events_path: Path) -> tuple[dict[int, list[int]], dict[int, Counter], int]:
    """Items per category, category counts per user, and the last event time."""
    from uic.event_files import read_events

    items_by_cat: dict[int, set] = defaultdict(set)
    user_cats: dict[int, Counter] = defaultdict(Counter)
    last_ts = 0
    for ev in read_events(events_path):
        if len(items_by_cat[ev.category_id]) < 50:
            items_by_cat[ev.category_id].add(ev.item_id)
        user_cats[ev.user_id][ev.category_id] += 1
        last_ts = max(last_ts, ev.event_time_ms)
    return {c: sorted(s) for c, s in items_by_cat.items()}, user_cats, last_ts


def wait_for_events(store, job: ChildProcess, model: str, user_id: int, target: int,
                    timeout: float) -> float:
    """Poll until the user's state has applied `target` events; returns seconds waited.
    Fails with the stream job's log if the job stops or `timeout` passes first."""
    t0 = time.perf_counter()
    while job.running and time.perf_counter() - t0 < timeout:
        rec = store.read_state(model, 1, user_id)
        if rec is not None and rec.events_applied >= target:
            return time.perf_counter() - t0
        time.sleep(0.05)
    why = "in time" if job.running else f"(the job exited with code {job.returncode})"
    raise DemoError(f"{model} state of user {user_id} did not reach {target} events "
                    f"{why}; the end of the {job.name}'s log {job.log_path}:\n{job.log_tail(30)}")


def live_events(store, jobs, scorers, catalog, n_users: int, burst: int):
    """Push a burst of events in a new category for a few users; show scores before/after."""
    from beam_jobs import DEFAULT_STREAM
    from beam_jobs.produce import produce
    from uic.events import Event

    items_by_cat, user_cats, last_ts = catalog
    rich_cats = [c for c, items in items_by_cat.items() if len(items) >= 5]
    users = sorted(user_cats, key=lambda u: -sum(user_cats[u].values()))[:n_users]
    for k, user in enumerate(users):
        top = user_cats[user].most_common(1)[0][0]
        new_cat = next(c for c in rich_cats if user_cats[user][c] == 0 and c != top)
        cands_items = items_by_cat[top][:5] + items_by_cat[new_cat][:5]
        cands_cates = [top] * 5 + [new_cat] * 5
        before = {m: scorers[m].score(user, cands_items, cands_cates)
                  for m in SEQUENCE_MODELS}
        applied = {m: before[m].events_applied or 0 for m in SEQUENCE_MODELS}
        payloads = [
            Event(user, items_by_cat[new_cat][j % len(items_by_cat[new_cat])], new_cat, "pv",
                  last_ts + 60_000 * (k + 1) + 1000 * j, f"live-{user}-{j}").to_json()
            for j in range(burst)]
        t_push = time.perf_counter()
        produce(store, DEFAULT_STREAM, payloads, rate=0.0, progress=False)
        waited = {m: wait_for_events(store, jobs[m], m, user, applied[m] + burst, 120)
                  for m in SEQUENCE_MODELS}
        after = {m: scorers[m].score(user, cands_items, cands_cates)
                 for m in SEQUENCE_MODELS}
        table = Table(title=f"user {user}: {burst} live clicks in category {new_cat} "
                            f"(their usual category is {top})")
        table.add_column("candidate item")
        table.add_column("category")
        for m in SEQUENCE_MODELS:
            table.add_column(f"{m} before")
            table.add_column(f"{m} after")
        for j, (item, cate) in enumerate(zip(cands_items, cands_cates, strict=True)):
            row = [str(item), f"{cate} ({'usual' if cate == top else 'new'})"]
            for m in SEQUENCE_MODELS:
                b, a = float(before[m].scores[j]), float(after[m].scores[j])
                color = "green" if a > b else "red"
                row += [f"{b:.3f}", f"[{color}]{a:.3f}[/{color}]"]
            table.add_row(*row)
        console.print(table)
        console.print("state visible after: " + ", ".join(
            f"{m} {waited[m] * 1000:.0f} ms" for m in SEQUENCE_MODELS) +
            f" (push to readable, {time.perf_counter() - t_push:.2f} s for both)")


def split_tail(events: Path, tail: int, head_out: Path, tail_out: Path) -> int:
    """Copy the time-ordered events.jsonl into its first lines (the backfill's input) and
    its last `tail` lines (the events the demo streams live). Returns the lines in the tail."""
    lines = events.read_bytes().splitlines(keepends=True)
    cut = max(0, len(lines) - tail)
    head_out.write_bytes(b"".join(lines[:cut]))
    tail_out.write_bytes(b"".join(lines[cut:]))
    return len(lines) - cut


def stream_tail(store, jobs, scorers, tail_path: Path, catalog, n_users: int) -> None:
    """Push the log's tail to the event stream as it happened, wait until every user's
    states in both models have applied their tail events, and show the scores of the items
    the busiest users went on to click, before and after."""
    from beam_jobs import DEFAULT_STREAM
    from beam_jobs.produce import produce
    from uic.event_files import read_events

    items_by_cat, _, _ = catalog
    tail = list(read_events(tail_path))
    per_user = Counter(ev.user_id for ev in tail)
    shown = [u for u, _ in per_user.most_common(n_users)]
    candidates = {}
    for user in shown:
        clicked = list(dict.fromkeys((ev.item_id, ev.category_id) for ev in tail
                                     if ev.user_id == user))[:5]
        others = [(items[0], cat) for cat, items in items_by_cat.items()
                  if items and cat not in {c for _, c in clicked}][:5]
        candidates[user] = clicked + others
    def score(model: str, user: int):
        return scorers[model].score(user, [i for i, _ in candidates[user]],
                                    [c for _, c in candidates[user]])

    before = {(u, m): score(m, u) for u in shown for m in SEQUENCE_MODELS}
    applied = {(u, m): _events_applied(store, m, u) for u in per_user for m in SEQUENCE_MODELS}
    t_push = time.perf_counter()
    produce(store, DEFAULT_STREAM, [ev.to_json() for ev in tail], rate=0.0, progress=False)
    for (user, model), done in applied.items():
        wait_for_events(store, jobs[model], model, user, done + per_user[user], 300)
    console.print(f"{len(tail)} events of {len(per_user)} users applied by both stream jobs "
                  f"{time.perf_counter() - t_push:.2f} s after the push")
    for user in shown:
        table = Table(title=f"user {user}: their last {per_user[user]} events of the log, "
                            "streamed live")
        for col in ("candidate item", "category", "clicked in the tail"):
            table.add_column(col)
        for m in SEQUENCE_MODELS:
            table.add_column(f"{m} before")
            table.add_column(f"{m} after")
        after = {m: score(m, user) for m in SEQUENCE_MODELS}
        clicked = {ev.item_id for ev in tail if ev.user_id == user}
        for j, (item, cate) in enumerate(candidates[user]):
            row = [str(item), str(cate), "yes" if item in clicked else "no"]
            for m in SEQUENCE_MODELS:
                b, a = float(before[(user, m)].scores[j]), float(after[m].scores[j])
                color = "green" if a > b else "red"
                row += [f"{b:.3f}", f"[{color}]{a:.3f}[/{color}]"]
            table.add_row(*row)
        console.print(table)


def _events_applied(store, model: str, user_id: int) -> int:
    rec = store.read_state(model, 1, user_id)
    return rec.events_applied if rec is not None else 0


def latency_comparison(scorers_a, scorers_b, user_ids, items_by_cat, n_requests: int):
    rng = np.random.default_rng(0)
    cats = [c for c, items in items_by_cat.items() if items]
    table = Table(title=f"Client latency, {n_requests} sequential requests x 100 candidates")
    for col in ("architecture", "model", "served model", "p50 ms", "p99 ms", "redis ms (p50)",
                "rpc ms (p50)"):
        table.add_column(col)
    rows = [("A: behaviours + full", "dien", scorers_a["dien"]),
            ("B: state + head", "dien", scorers_b["dien"]),
            ("B: state + head", "mimn", scorers_b["mimn"])]
    for label, model, scorer in rows:
        totals, redis_ms, rpc_ms = [], [], []
        for i in range(n_requests):
            cand_cates = rng.choice(cats, 100)
            cand_items = [items_by_cat[c][0] for c in cand_cates]
            res = scorer.score(int(user_ids[i % len(user_ids)]), cand_items, cand_cates)
            totals.append(res.total_ms)
            redis_ms.append(res.redis_ms)
            rpc_ms.append(res.rpc_ms)
        table.add_row(label, model, res.served_model, f"{np.percentile(totals, 50):.2f}",
                      f"{np.percentile(totals, 99):.2f}", f"{np.percentile(redis_ms, 50):.2f}",
                      f"{np.percentile(rpc_ms, 50):.2f}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".demo", help="where data, runs, exports and logs go "
                        "(default: .demo; removed and recreated)")
    parser.add_argument("--data", type=Path, default=None,
                        help="run on this behaviour log instead of synthetic data: Taobao's "
                        "UserBehavior.csv (user,item,category,behaviour,timestamp) or events "
                        "JSONL; samples are built with tf_models.data.samples")
    parser.add_argument("--tail_events", type=int, default=200,
                        help="with --data: the log's last N events are streamed live instead "
                        "of backfilled (default 200)")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    parser.add_argument("--size", choices=("paper", "tiny"), default="paper",
                        help="model sizes: the papers' (default) or tiny ones for a smoke run")
    parser.add_argument("--live_users", type=int, default=2, help="users that get live events")
    parser.add_argument("--burst", type=int, default=15, help="live events per user")
    parser.add_argument("--requests", type=int, default=200, help="requests per latency row")
    args = parser.parse_args(argv)
    if args.users < 50 or args.epochs < 1 or args.live_users < 1 or args.burst < 1:
        parser.error("--users must be >= 50 and --epochs, --live_users, --burst >= 1")
    if args.tail_events < 1:
        parser.error("--tail_events must be >= 1")
    if args.data is not None and not args.data.is_file():
        parser.error(f"--data {args.data}: no such file (give Taobao's UserBehavior.csv or an "
                     "events JSONL file)")

    import shutil

    _import_tensorflow_quietly()
    work = Path(args.workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    data, runs, exports = work / "data", work / "runs", work / "saved_models"
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        console.rule("[bold cyan]1. Redis")
        redis_server = stack.enter_context(EmbeddedRedis(data_dir=work / "redis"))
        console.print(f"redis-server on {redis_server.url} (data in {work / 'redis'})")

        train_args: list[str] = []
        if args.data is None:
            run_cli("2. Synthetic behaviour logs", ["-m", "tf_models.data.synthetic", "--out",
                                                    str(data), "--users", str(args.users)])
        else:
            run_cli(f"2. Training samples from {args.data}",
                    ["-m", "tf_models.data.samples", "--log", str(args.data.resolve()), "--out",
                     str(data), "--no_progress"])
            trainer = json.loads((data / "samples.json").read_text())["trainer"]
            train_args = ["--eval_fraction", repr(trainer["eval_fraction"]),
                          "--max_len", str(trainer["max_len"])]
        for model in MODELS:
            run_cli(f"3. Train {model}", ["-m", "tf_models.train", "--model", model,
                                          "--data", str(data), "--out", str(runs / model),
                                          "--epochs", str(args.epochs), "--size", args.size,
                                          "--verbose", "2", *train_args])
        auc = Table(title="Held-out AUC (time-based split)")
        auc.add_column("model")
        auc.add_column("AUC")
        for model in MODELS:
            metrics = json.loads((runs / model / "metrics.json").read_text())
            auc.add_row(model, f"{metrics.get('eval_auc', metrics.get('auc', float('nan'))):.4f}")
        console.print(auc)
        for model in MODELS:
            run_cli(f"4. Export {model} version 1", ["-m", "tf_models.export", "--run",
                                                     str(runs / model), "--out", str(exports),
                                                     "--version", "1"], quiet=True)

        console.rule("[bold cyan]5. Model server")
        from devkit.model_server_process import ModelServerProcess
        from model_server.config import write_models_config

        served = [serving_model_name(m, part) for m in SEQUENCE_MODELS for part in ("head", "full")]
        config = write_models_config(work / "models.config", {n: exports / n for n in served})
        # the exports compile their head blocks with XLA; TF Serving runs such models only
        # with this flag (off by default)
        server = stack.enter_context(ModelServerProcess(
            [f"--model_config_file={config}", "--xla_cpu_compilation_enabled=true"],
            log_path=work / "logs" / "model_server.log"))
        console.print(f"serving {served}: gRPC {server.grpc_target}, REST {server.rest_url} "
                      "(same flags as tensorflow_model_server)")

        events = backfill_events = data / "events.jsonl"
        if args.data is not None:
            backfill_events, tail_events = work / "backfill_events.jsonl", work / "tail_events.jsonl"
            n_tail = split_tail(events, args.tail_events, backfill_events, tail_events)
            console.print(f"the log's last {n_tail} events are kept for the live stream "
                          f"({tail_events}); the rest is backfilled")
        for model in SEQUENCE_MODELS:
            run_cli(f"6. Backfill {model} states (Beam batch)",
                    ["-m", "beam_jobs.backfill", "--events", str(backfill_events), "--model", model,
                     "--version", "1", "--saved_models", str(exports), "--redis_url", redis_server.url,
                     "--dead_letter", str(work / "logs" / f"dead-{model}.jsonl")])

        console.rule("[bold cyan]7. Streaming jobs")
        jobs = {}
        for model in SEQUENCE_MODELS:  # both start at once; then wait for each to be reading
            jobs[model] = start_stream_job(model, exports, redis_server.url, work / "logs")
            stack.callback(jobs[model].stop, 15)
        for model, job in jobs.items():
            wait_for_consumer_group(job, redis_server.url, f"uic-{model}")
            console.print(f"stream job for {model} is reading (consumer group uic-{model})")

        from client import Scorer
        from uic.store import connect as store_connect

        store = store_connect(redis_server.url)
        scorers_b = {m: stack.enter_context(Scorer(m, redis_url=redis_server.url, server=server.grpc_target,
                                                   deadline_ms=5000))
                     for m in SEQUENCE_MODELS}
        scorers_a = {m: stack.enter_context(Scorer(m, redis_url=redis_server.url, server=server.grpc_target,
                                                   arch="A", history_length=1000,
                                                   deadline_ms=30000))
                     for m in SEQUENCE_MODELS}
        catalog = read_catalog(events)
        if args.data is None:
            console.rule("[bold cyan]8. Live events change the scores")
            live_events(store, jobs, scorers_b, catalog, args.live_users, args.burst)
        else:
            console.rule("[bold cyan]8. The log's tail, streamed live, changes the scores")
            stream_tail(store, jobs, scorers_b, tail_events, catalog, args.live_users)

        console.rule("[bold cyan]9. Architecture A vs B through the client")
        items_by_cat, user_cats, _ = catalog
        latency_comparison(scorers_a, scorers_b, sorted(user_cats), items_by_cat, args.requests)
        console.rule("[bold cyan]10. Stopping everything")
    console.print(f"[bold green]Demo finished in {time.perf_counter() - t_start:.0f} s; "
                  f"nothing left running. Files are in {work}.")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (DemoError, ProcessStartError, EmbeddedRedisError) as err:
        console.print(f"[bold red]demo failed:[/bold red] {err}")
        raise SystemExit(1) from None
