"""`make demo` end to end, at smoke-test size: every step runs for real (Redis, training,
export, model server, Beam backfill and streaming, live events, both architectures) and the
demo must leave no process behind; once on synthetic data, once on a behaviour log in
Taobao's format that the test writes."""

import datetime as dt
import os
import random
import subprocess
import sys
import uuid

import psutil
import pytest

TOKEN_VAR = "UIC_DEMO_TEST_TOKEN"


def processes_with_token(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries `TOKEN_VAR=token`: everything the demo
    started, however deep, even after it was re-parented (every child inherits the demo's
    environment, and a child in a session of its own is not a descendant any more once the
    demo has exited)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TOKEN_VAR) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def test_the_leftover_check_sees_a_detached_grandchild():
    """The check used below must be able to fail: a process that left its parent's session
    and outlived it is found."""
    token = uuid.uuid4().hex
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                env=dict(os.environ, **{TOKEN_VAR: token}),
                                start_new_session=True)
    try:
        assert [p.pid for p in processes_with_token(token)] == [leftover.pid]
    finally:
        leftover.kill()
        leftover.wait()
    assert processes_with_token(token) == []


@pytest.mark.slow
def test_demo_runs_end_to_end_and_stops_everything(tmp_path):
    token = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.demo", "--workdir", str(tmp_path / "demo"), "--users", "120",
         "--size", "tiny", "--live_users", "1", "--burst", "5", "--requests", "20"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **{TOKEN_VAR: token}))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for marker in ("Held-out AUC", "is reading (consumer group uic-dien)",
                   "is reading (consumer group uic-mimn)", "live clicks", "A: behaviours + full",
                   "B: state + head", "nothing left running"):
        assert marker in out, f"{marker!r} missing from demo output:\n{out[-4000:]}"
    assert "absl::InitializeLog" not in proc.stdout
    left = processes_with_token(token)
    assert left == [], left


def write_taobao_csv(path, users: int = 30, seed: int = 0) -> int:
    """A small UserBehavior.csv (user,item,category,behaviour,unix seconds; no header): each
    user mostly browses two favourite categories over the nine Taobao days, lines shuffled
    as in the real file. Returns the number of lines."""
    rng = random.Random(seed)
    start = int(dt.datetime(2017, 11, 25, 8, tzinfo=dt.timezone(dt.timedelta(hours=8)))
                .timestamp())
    categories = {c: [c * 100 + i for i in range(8)] for c in range(1, 9)}
    lines = []
    for user in range(1, users + 1):
        favourites = rng.sample(sorted(categories), 2)
        for _ in range(rng.randint(8, 16)):
            cat = rng.choice(favourites) if rng.random() < 0.8 else rng.choice(sorted(categories))
            kind = rng.choices(["pv", "cart", "fav", "buy"], [85, 6, 5, 4])[0]
            ts = start + rng.randint(0, 8 * 86400)
            lines.append(f"{user},{rng.choice(categories[cat])},{cat},{kind},{ts}\n")
    rng.shuffle(lines)
    path.write_text("".join(lines))
    return len(lines)


@pytest.mark.slow
def test_demo_runs_on_a_taobao_log(tmp_path):
    log = tmp_path / "UserBehavior.csv"
    assert 240 <= write_taobao_csv(log) <= 480
    token = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.demo", "--workdir", str(tmp_path / "demo"), "--data",
         str(log), "--tail_events", "40", "--size", "tiny", "--live_users", "1",
         "--requests", "10"],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **{TOKEN_VAR: token}))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for marker in ("Training samples from", "Held-out AUC", "last 40 events are kept",
                   "40 events of", "applied by both stream jobs", "streamed live",
                   "A: behaviours + full", "B: state + head", "nothing left running"):
        assert marker in out, f"{marker!r} missing from demo output:\n{out[-4000:]}"
    assert "Synthetic behaviour logs" not in out
    assert processes_with_token(token) == []


def test_demo_rejects_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "devkit.demo", "--users", "3",
                           "--workdir", str(tmp_path / "d")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--users must be >= 50" in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "devkit.demo", "--data",
                              str(tmp_path / "none.csv"), "--workdir", str(tmp_path / "d")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
