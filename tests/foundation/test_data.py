"""tf_models.data: the synthetic generator, the Taobao CSV reader and the file readers."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tf_models.data.synthetic import (
    SyntheticConfig,
    click_probability,
    generate,
    iter_users,
)
from tf_models.metrics import auc
from uic.event_files import read_events, read_events_with_errors, read_impressions
from uic.events import Event, Impression

ROOT = Path(__file__).resolve().parents[2]
SMALL = SyntheticConfig(users=60, seed=3, items=8000, impressions_per_user=10)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    generate(out, SMALL, progress=False)
    return out


def test_files_are_ordered_valid_and_match_stats(small_data):
    events = list(read_events(small_data / "events.jsonl"))
    imps = list(read_impressions(small_data / "impressions.jsonl"))
    stats = json.loads((small_data / "stats.json").read_text())
    assert stats["events"] == len(events) and stats["impressions"] == len(imps)
    # byte-identical to the schema's own serialisation
    assert (small_data / "events.jsonl").read_text() == "".join(e.to_json() + "\n" for e in events)
    assert (small_data / "impressions.jsonl").read_text() == "".join(
        i.to_json() + "\n" for i in imps)
    assert [e.sort_key for e in events] == sorted(e.sort_key for e in events)
    assert [i.event_time_ms for i in imps] == sorted(i.event_time_ms for i in imps)
    assert len({e.event_id for e in events}) == len(events)
    per_user = Counter(e.user_id for e in events)
    assert len(per_user) == SMALL.users
    assert all(SMALL.min_events <= n <= SMALL.max_events for n in per_user.values())
    assert min(per_user) >= 10_000  # realistic, spread-out ids
    assert all(1 <= e.item_id <= 5_000_000 for e in events)
    assert len({e.category_id for e in events}) <= SMALL.categories
    assert max(e.item_id for e in events) > 1_000_000
    assert set(stats["behavior_types"]) == {"pv", "cart", "fav", "buy"}
    assert stats["params"]["seed"] == 3
    # every impression is judged on a history of at least min_prefix earlier events
    times: dict[int, list[int]] = {}
    for e in events:
        times.setdefault(e.user_id, []).append(e.event_time_ms)
    for imp in imps:
        assert sum(t < imp.event_time_ms for t in times[imp.user_id]) >= SMALL.min_prefix


def test_deterministic_by_seed_and_independent_of_spilling(small_data, tmp_path):
    generate(tmp_path / "again", SMALL, progress=False, spill_every=500)  # many sorted runs
    for name in ("events.jsonl", "impressions.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (small_data / name).read_bytes()
    other = SyntheticConfig(**{**SMALL.__dict__, "seed": 4, "users": 5})
    generate(tmp_path / "other", other, progress=False)
    first = (tmp_path / "other" / "events.jsonl").read_text().splitlines()[0]
    assert first not in (small_data / "events.jsonl").read_text()
    assert not list(tmp_path.glob("*/.tmp-synthetic-*"))  # temporary runs are cleaned up


def test_in_memory_users_match_the_files(small_data):
    events = [Event.from_json(line) for line in (small_data / "events.jsonl").open()]
    users = list(iter_users(SMALL))
    assert sorted(e.sort_key for u in users for e in u.events) == [e.sort_key for e in events]
    for u in users:
        assert u.events == sorted(u.events, key=lambda e: e.sort_key)
        assert len(u.click_prob) == len(u.impressions)


def test_order_and_recency_carry_signal_a_sum_pool_cannot_see():
    """The true click probability beats the best order-free score of the same form by a
    clear AUC margin, and the labels are calibrated to the stated probability."""
    cfg = SyntheticConfig(users=400, seed=11)
    probs, free, labels = [], [], []
    for u in iter_users(cfg):
        probs += u.click_prob
        free += u.order_free_score
        labels += [i.label for i in u.impressions]
    assert auc(probs, labels) > auc(free, labels) + 0.05
    assert abs(np.mean(labels) - np.mean(probs)) < 0.03
    assert 0.2 < np.mean(labels) < 0.6


def test_click_probability_depends_on_order():
    cfg = SyntheticConfig()
    old_then_new = [1] * 30 + [2] * 20
    new_then_old = [2] * 20 + [1] * 30  # same multiset, other order
    p_a, free_a = click_probability(old_then_new, 2, 0.0, cfg)
    p_b, free_b = click_probability(new_then_old, 2, 0.0, cfg)
    assert free_a == free_b  # an order-free view cannot tell them apart
    assert p_a > 0.8 and p_b < 0.3  # but the click probability differs a lot
    never_seen, _ = click_probability(old_then_new, 3, 0.0, cfg)
    long_ago, _ = click_probability([3] * 10 + [1] * 40, 3, 0.0, cfg)
    assert long_ago > never_seen * 2  # long-ago interests still matter


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tf_models.data.synthetic", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli(tmp_path):
    assert "--users" in _cli("--help").stdout
    ok = _cli("--out", str(tmp_path / "d"), "--users", "5", "--no_progress")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["users"] == 5
    assert (tmp_path / "d" / "stats.json").is_file()
    bad = _cli("--out", str(tmp_path / "x"), "--users", "0")
    assert bad.returncode == 2 and "--users: must be >= 1" in bad.stderr
    bad = _cli("--out", str(tmp_path / "x"), "--categories", "1")
    assert bad.returncode == 2 and "categories=1 is invalid" in bad.stderr
    bad = _cli("--out", str(tmp_path / "x"), "--min_events", "400")
    assert bad.returncode == 2 and "min_events=400 is invalid" in bad.stderr
    assert _cli("--users", "3").returncode == 2  # --out is required


TAOBAO = """\
1,2268318,2520377,pv,1511544070
1,2333346,2520771,buy,1511561733

100,5002615,2520377,cart,1511651280
1,2268318,2520377,pv
x,1,2,pv,1511544070
2,1,2,click,1511544070
3,1,2,fav,-5
4,-1,2,fav,1511544070
5,1,2,fav,15115440.5
1,2268318,2520377,pv,1511544070
"""


def test_taobao_reader(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    path.write_text(TAOBAO)
    rows = list(read_events_with_errors(path))
    good = [(e, n) for e, err, n in rows if e is not None]
    bad = {n: err for e, err, n in rows if e is None}
    assert [n for _, n in good] == [1, 2, 4, 11]
    first = good[0][0]
    assert first == Event(user_id=1, item_id=2268318, category_id=2520377, behavior_type="pv",
                          event_time_ms=1511544070000,
                          event_id="tb-0000000001-1-2268318-pv-1511544070")
    assert good[2][0].behavior_type == "cart"
    # the duplicate line (11) gets its own id; re-reading gives the same ids
    assert good[3][0].event_id != first.event_id
    assert [e.event_id for e in read_events(path)] == [e.event_id for e, _ in good]
    assert set(bad) == {5, 6, 7, 8, 9, 10}
    assert "expected 5 comma-separated fields" in bad[5]
    assert bad[6].startswith("user_id: must be an integer")
    assert bad[7].startswith("behavior_type: must be one of")
    assert bad[8].startswith("timestamp: must be >= 0")
    assert bad[9].startswith("item_id: must be in")
    assert bad[10].startswith("timestamp: must be an integer")
    stats: dict = {}
    assert len(list(read_events(path, stats))) == 4
    assert stats == {"read": 4, "skipped": 6}


def test_jsonl_readers_skip_and_count_bad_lines(tmp_path, caplog):
    good = Event(user_id=1, item_id=2, category_id=3, behavior_type="pv", event_time_ms=4,
                 event_id="a")
    lines = [good.to_json(), "{not json", json.dumps({**good.to_dict(), "item_id": -1}), "",
             json.dumps({**good.to_dict(), "event_id": "b"})]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows = list(read_events_with_errors(path))
    assert [(e is not None, n) for e, _, n in rows] == [(True, 1), (False, 2), (False, 3), (True, 5)]
    assert "not valid JSON" in rows[1][1] and rows[2][1].startswith("item_id:")
    stats: dict = {}
    with caplog.at_level("WARNING"):
        assert [e.event_id for e in read_events(path, stats)] == ["a", "b"]
    assert stats == {"read": 2, "skipped": 2}
    assert "skipped 2 malformed event line(s)" in caplog.text and "line 2" in caplog.text
    gz = tmp_path / "events.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("\n".join(lines) + "\n")
    assert [e.event_id for e in read_events(gz)] == ["a", "b"]

    imp = Impression(user_id=1, item_id=2, category_id=3, event_time_ms=4, label=1)
    ipath = tmp_path / "impressions.jsonl"
    ipath.write_text("\n".join([imp.to_json(), '{"label": 1}', "[]", imp.to_json()]) + "\n")
    istats: dict = {}
    assert list(read_impressions(ipath, istats)) == [imp, imp]
    assert istats == {"read": 2, "skipped": 2}


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tf_models.data.synthetic"):
        read_events(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_impressions(tmp_path / "nope.jsonl")
