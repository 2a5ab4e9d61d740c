"""`make demo DATA=UserBehavior.csv` end to end, at smoke-test size: the demo on a behaviour
log in Taobao's format that the test writes (samples built from the log, its tail streamed
live), leaving no process behind. The synthetic-data run: test_demo.py."""

import datetime as dt
import os
import random
import subprocess
import sys
import uuid

import pytest

from tests.devkit.test_demo import TOKEN_VAR, processes_with_token


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
