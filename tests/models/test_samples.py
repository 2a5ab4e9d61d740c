"""Training samples from a behaviour log (tf_models.data.samples), checked against a small
Taobao-format CSV written here: unsorted lines, malformed lines, lines outside the nine
days, ties in time. The expected samples are computed from the rows the test wrote, and the
output directory is read back with the trainer's own reader."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import numpy as np
import pytest

from tf_models.data.samples import (
    SUMMARY_FILE,
    NegativeSampler,
    SampleConfig,
    build_samples,
    main,
    parse_window,
)
from uic.events import Event, Impression

START_S = 1_511_539_200  # 2017-11-25 00:00 Beijing time
END_S = 1_512_316_800  # 2017-12-04 00:00 Beijing time
WINDOW_MS = (START_S * 1000, END_S * 1000)
MALFORMED = ["1,2,3,pv", "7,abc,3,pv,1511600000", "8,9,10,click,1511600000", ""]  # "" is skipped
OUTSIDE = [f"{u},{900 + u},77,pv,{t}" for u, t in
           ((1, START_S - 1), (2, END_S), (3, START_S - 86_400), (4, END_S + 3600))]


def write_log(path, users=40, seed=1):
    """A shuffled Taobao CSV; returns the valid in-window rows as (user, item, cate, time_s,
    line_no) and the users planted with one behaviour or with all behaviours in one second."""
    rng = random.Random(seed)
    rows = []
    for user in range(1, users + 1):
        n = rng.randint(2, 14)
        times = sorted(START_S + rng.randrange(0, END_S - START_S) for _ in range(n))
        for k in range(1, n):  # ties in time: some behaviours share the previous second
            if rng.random() < 0.25:
                times[k] = times[k - 1]
        for t in times:
            item = rng.randint(1, 60)
            rows.append([user, item, 500 + item % 7, t])
    lonely, same_second = users + 1, users + 2
    rows.append([lonely, 5, 505, START_S + 10])
    rows += [[same_second, 6, 506, START_S + 99], [same_second, 7, 500, START_S + 99]]
    behaviours = ("pv", "pv", "pv", "cart", "fav", "buy")
    tagged = [(f"{u},{i},{c},{rng.choice(behaviours)},{t}", [u, i, c, t]) for u, i, c, t in rows]
    tagged += [(line, None) for line in MALFORMED + OUTSIDE]
    rng.shuffle(tagged)
    path.write_text("".join(line + "\n" for line, _ in tagged))
    valid = [(*row, n) for n, (_, row) in enumerate(tagged, start=1) if row is not None]
    return valid, {"lonely": lonely, "same_second": same_second}


def expected_targets(valid):
    """Per user: (target row, history rows) with the protocol written out directly."""
    per_user = defaultdict(list)
    for row in valid:
        per_user[row[0]].append(row)
    out = {}
    for user, rows in per_user.items():
        rows.sort(key=lambda r: (r[3], r[4]))  # time, then line: the event_id order
        target = rows[-1]
        out[user] = (target, [r for r in rows if r[3] < target[3]])
    return out


def read_jsonl(path, parse):
    return [parse(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "UserBehavior.csv"
    valid, planted = write_log(path)
    return path, valid, planted


@pytest.fixture(scope="module")
def built(log, tmp_path_factory):
    path, _, _ = log
    out = tmp_path_factory.mktemp("samples")
    result = build_samples(path, out, SampleConfig(window_ms=WINDOW_MS, max_history=5),
                           progress=False)
    return out, result


def test_dropped_lines_and_counts(log, built):
    _, valid, planted = log
    out, result = built
    s = result["summary"]
    assert s["malformed"] == 3 and len(s["first_errors"]) == 3
    assert s["outside_window"] == len(OUTSIDE)
    assert s["events"] == len(valid)
    assert s["users_too_few_behaviours"] == 1 and s["events_of_users_too_few_behaviours"] == 1
    targets = expected_targets(valid)
    no_history = [u for u, (_, history) in targets.items() if not history and u != planted["lonely"]]
    assert planted["same_second"] in no_history
    assert s["targets_without_earlier_behaviour"] == len(no_history)
    expected = {u: t for u, t in targets.items() if t[1]}
    imps = read_jsonl(out / "impressions.jsonl", Impression.from_json)
    positives = [i for i in imps if i.label == 1]
    negatives = [i for i in imps if i.label == 0]
    assert len(positives) == len(negatives) == len(expected) == s["users_with_samples"]
    assert s["samples_train"] + s["samples_eval"] == len(imps)
    for imp in positives:
        target = expected[imp.user_id][0]
        assert (imp.item_id, imp.category_id, imp.event_time_ms) == (target[1], target[2], target[3] * 1000)


def test_events_file_is_the_window_in_time_order(log, built):
    _, valid, _ = log
    out, _ = built
    events = read_jsonl(out / "events.jsonl", Event.from_json)
    assert [e.sort_key for e in events] == sorted(e.sort_key for e in events)
    assert sorted((e.user_id, e.item_id, e.event_time_ms) for e in events) == sorted(
        (r[0], r[1], r[3] * 1000) for r in valid)
    lines = (out / "events.jsonl").read_text().splitlines()
    assert lines == [e.to_json() for e in events]  # byte for byte the schema's own form


def test_negatives_avoid_target_and_history_and_carry_their_category(log, built):
    _, valid, _ = log
    out, _ = built
    category = {r[1]: r[2] for r in valid}
    expected = expected_targets(valid)
    imps = read_jsonl(out / "impressions.jsonl", Impression.from_json)
    by_key = defaultdict(dict)
    for imp in imps:
        by_key[(imp.user_id, imp.event_time_ms)][imp.label] = imp
    for (user, _), pair in by_key.items():
        pos, neg = pair[1], pair[0]
        target, history = expected[user]
        assert neg.item_id != pos.item_id
        assert neg.item_id not in {r[1] for r in history[-5:]}
        assert neg.category_id == category[neg.item_id]
        assert neg.event_time_ms == pos.event_time_ms


def test_trainer_reads_the_directory_with_the_split(log, built):
    from tf_models.dataset import load_examples

    _, valid, _ = log
    out, result = built
    s, trainer = result["summary"], result["trainer"]
    data = load_examples(out, max_len=trainer["max_len"], eval_fraction=trainer["eval_fraction"])
    assert (len(data.train), len(data.eval)) == (s["samples_train"], s["samples_eval"])
    cut = s["eval_cut_time_ms"]
    assert data.train.time_ms.max() <= cut < data.eval.time_ms.min()
    targets = expected_targets(valid)
    target_times = [t[0][3] * 1000 for t in targets.values() if t[1]]
    assert cut == int(np.floor(np.quantile(target_times, 0.7)))
    assert s["users_eval"] == sum(t > cut for t in target_times)
    # history: the behaviours strictly before the target, in (time, line) order, last max_len
    histories = {(t[0][3] * 1000, t[0][1], tuple((r[1], r[2]) for r in t[1][-5:]))
                 for t in targets.values()}
    for part in (data.train, data.eval):
        assert part.hist_len.min() >= 1
        for row in np.flatnonzero(part.label == 1):
            n = int(part.hist_len[row])
            seen = tuple(zip(part.hist_item_ids[row, :n].tolist(),
                             part.hist_cate_ids[row, :n].tolist(), strict=True))
            assert (int(part.time_ms[row]), int(part.cand_item_ids[row]), seen) in histories


def test_same_output_with_many_sorted_runs_and_with_the_same_seed(log, built, tmp_path):
    path, _, _ = log
    out, result = built
    assert result["summary"]["sorted_runs"] == 0  # one chunk: sorted in memory
    small = build_samples(path, tmp_path / "small", SampleConfig(window_ms=WINDOW_MS, max_history=5,
                                                                 chunk_lines=7), progress=False)
    assert small["summary"]["sorted_runs"] > 5
    for name in ("events.jsonl", "impressions.jsonl"):
        assert (tmp_path / "small" / name).read_bytes() == (out / name).read_bytes()
    other = build_samples(path, tmp_path / "seed", SampleConfig(window_ms=WINDOW_MS, max_history=5,
                                                                seed=1), progress=False)
    assert other["summary"]["samples_eval"] == result["summary"]["samples_eval"]
    assert (tmp_path / "seed" / "impressions.jsonl").read_bytes() != (out / "impressions.jsonl").read_bytes()


def test_events_jsonl_log_gives_the_same_samples(built, tmp_path):
    out, result = built
    again = build_samples(out / "events.jsonl", tmp_path, SampleConfig(max_history=5), progress=False)
    assert again["summary"]["malformed"] == again["summary"]["outside_window"] == 0
    for name in ("events.jsonl", "impressions.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_more_targets_per_user(log, tmp_path):
    path, valid, _ = log
    result = build_samples(path, tmp_path, SampleConfig(window_ms=WINDOW_MS, targets_per_user=3),
                           progress=False)
    imps = read_jsonl(tmp_path / "impressions.jsonl", Impression.from_json)
    assert [i.event_time_ms for i in imps] == sorted(i.event_time_ms for i in imps)
    per_user = defaultdict(int)
    for row in valid:
        per_user[row[0]] += 1
    s = result["summary"]
    assert s["targets"] == sum(min(3, n) for n in per_user.values() if n >= 2)
    assert sum(i.label for i in imps) == len(imps) // 2 == s["targets"] - (
        s["targets_without_earlier_behaviour"] + s["targets_without_negative"])


def test_negative_sampler_distributions():
    counts, cates = {1: 1000, 2: 1, 3: 1}, {1: 11, 2: 12, 3: 13}
    rng = np.random.default_rng(0)
    popular = NegativeSampler(counts, cates, "popularity", 1.0)
    draws = [popular.draw(rng, set()) for _ in range(500)]
    assert sum(d == (1, 11) for d in draws) > 450
    flat = NegativeSampler(counts, cates, "popularity", 0.0)  # power 0: uniform
    assert sum(flat.draw(rng, set())[0] == 1 for _ in range(600)) < 300
    uniform = NegativeSampler(counts, cates, "uniform", 1.0)
    assert {uniform.draw(rng, {1, 2}) for _ in range(50)} == {(3, 13)}
    assert uniform.draw(rng, {1, 2, 3}) is None


def test_window_parsing():
    assert parse_window("2017-11-25,2017-12-03") == WINDOW_MS
    assert parse_window("none") is None
    assert parse_window("10,20") == (10, 20)
    for bad in ("2017-11-25", "2017-12-03,2017-11-25", "yesterday,today"):
        with pytest.raises(ValueError, match="--window"):
            parse_window(bad)


def test_cli_summary_and_errors(log, tmp_path, capsys):
    path, _, _ = log
    assert main(["--log", str(path), "--out", str(tmp_path / "d"), "--no_progress",
                 "--max_history", "5"]) == 0
    printed = capsys.readouterr().out
    assert "malformed (dropped)" in printed and "--eval_fraction" in printed
    summary = json.loads((tmp_path / "d" / SUMMARY_FILE).read_text())["summary"]
    assert summary["outside_window"] == len(OUTSIDE)  # a .csv log gets the Taobao window
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    cases = [
        (["--log", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "e")], "no such file"),
        (["--log", str(path), "--out", str(tmp_path / "full")], "not empty"),
        (["--log", str(path), "--out", str(tmp_path / "e"), "--eval_quantile", "1.5"], "eval_quantile"),
        (["--log", str(path), "--out", str(tmp_path / "e"), "--window", "a,b"], "--window"),
        (["--log", str(path), "--out", str(tmp_path / "e"), "--negatives", "zipf"], "invalid choice"),
        (["--log", str(path), "--out", str(tmp_path / "e"), "--window", "1,2"], "no valid behaviour"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--no_progress"])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_training_runs_on_the_output(built, tmp_path):
    from tf_models.train import main as train_main

    out, result = built
    trainer = result["trainer"]
    assert train_main([
        "--model", "mlp", "--data", str(out), "--out", str(tmp_path / "run"), "--size", "tiny",
        "--epochs", "1", "--batch_size", "32", "--max_len", str(trainer["max_len"]),
        "--eval_fraction", repr(trainer["eval_fraction"]), "--verbose", "0",
    ]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_examples"] == result["summary"]["samples_eval"]
    assert metrics["eval_positive_rate"] == 0.5
