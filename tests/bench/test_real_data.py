"""bench.real_data end to end on a tiny generated log (the real samples command as a child
process, the real backfill into a real redis-server, tiny exports), and the Taobao-format
generator it uses. Structure and accounting only: no speed asserts."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from bench import real_data
from tf_models.data.samples import parse_window
from tf_models.data.taobao_synth import BEHAVIOUR_LINES, TaobaoShape, write_taobao_csv
from uic.taobao import parse_taobao_line


def test_generator_writes_a_taobao_log_of_the_real_shape(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    info = write_taobao_csv(path, TaobaoShape(lines=30_000, chunk_lines=4_000), progress=False)
    events = [parse_taobao_line(line, i) for i, line in enumerate(path.open(), start=1)]
    assert len(events) == info["lines"] == 30_000
    start_ms, end_ms = parse_window("2017-11-25,2017-12-03")
    assert all(start_ms <= e.event_time_ms < end_ms for e in events)
    users = [e.user_id for e in events]
    assert users == sorted(users)  # grouped by user, as the public file
    per_user = np.array(list(Counter(users).values()))
    assert len(per_user) == info["users"] == round(30_000 * 987_994 / 100_150_807)
    assert per_user.max() > 5 * np.median(per_user)  # Zipf: a few very active users
    item_counts = Counter(e.item_id for e in events)
    assert item_counts.most_common(1)[0][1] > 20 * np.median(list(item_counts.values()))
    categories: dict[int, set] = {}
    for e in events:
        categories.setdefault(e.item_id, set()).add(e.category_id)
    assert all(len(c) == 1 for c in categories.values())  # one category per item
    types = Counter(e.behavior_type for e in events)
    total = sum(BEHAVIOUR_LINES.values())
    for name, count in BEHAVIOUR_LINES.items():
        assert types[name] / len(events) == pytest.approx(count / total, abs=0.01)

    again = tmp_path / "again.csv"
    write_taobao_csv(again, TaobaoShape(lines=30_000, chunk_lines=4_000), progress=False)
    assert again.read_bytes() == path.read_bytes()
    other = tmp_path / "other.csv"
    write_taobao_csv(other, TaobaoShape(lines=30_000, chunk_lines=4_000, seed=1), progress=False)
    assert other.read_bytes() != path.read_bytes()


def test_generator_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="user_zipf"):
        write_taobao_csv(tmp_path / "x.csv", TaobaoShape(lines=10, user_zipf=-1), progress=False)
    with pytest.raises(SystemExit) as exit_info:
        real_data.main(["--help"])
    assert exit_info.value.code == 0


def test_quick_run_reports_every_figure(tmp_path, tiny_exports, capsys):
    out = tmp_path / "real_data.json"
    plan = real_data.Plan.quick_plan(lines=10_000)
    report = real_data.run(plan, workdir=tmp_path, out=out, exports=tiny_exports, argv=["--quick"])
    assert json.loads(out.read_text()) == report
    assert len(report["commit"]) == 40 and isinstance(report["dirty"], bool)
    assert report["provenance"]["command"] == "python -m bench.real_data --quick"
    assert list(tmp_path.iterdir()) == [out]  # the log, samples and redis data are gone

    samples = report["samples"]
    assert samples["lines"] == samples["events"] == report["generated"]["lines"] == 10_000
    assert samples["malformed"] == samples["outside_window"] == 0
    assert samples["users"] == report["generated"]["users"]
    assert samples["samples_train"] + samples["samples_eval"] == 2 * samples["users_with_samples"]
    assert samples["peak_rss_mb"] > 10  # a Python process: ru_maxrss of the child was read

    prefix = report["backfill_prefix"]
    assert prefix["users"] == plan.backfill_users < prefix["users_in_log"]
    assert [b["model"] for b in report["backfill"]] == ["dien", "mimn"]
    for b in report["backfill"]:  # every user of the prefix, whole histories
        assert (b["users"], b["events"], b["states_written"]) == (
            prefix["users"], prefix["events"], prefix["users"])
        assert b["users_per_s"] > 0 and b["events_per_s"] > 0
    lists = report["behaviour_lists"]
    assert lists["length_mean"] == pytest.approx(prefix["events"] / prefix["users"], rel=0.5)

    memory = {(m["model"], m["dtype"]): m for m in report["memory"]}
    assert set(memory) == {(m, d) for m in ("dien", "mimn") for d in ("fp32", "fp16")}
    for model in ("dien", "mimn"):
        fp32, fp16 = memory[(model, "fp32")], memory[(model, "fp16")]
        assert fp32["state_floats"] == fp16["state_floats"] > 0
        assert fp32["users"] == fp16["users"] == plan.memory_users
        # same header and event ids, the floats at 4 bytes against 2
        assert fp32["value_bytes"] - fp16["value_bytes"] == pytest.approx(
            2 * fp32["state_floats"])
        for row in (fp32, fp16):
            assert row["memory_usage_bytes"] > row["value_bytes"]
            assert row["used_memory_per_user"] > 0
            assert row["vs_paper"] == pytest.approx(row["memory_usage_bytes"] / 4500, abs=1e-3)
    assert any("MEMORY USAGE" in line for line in real_data.markdown_section(report))
    printed = capsys.readouterr().out
    assert "Redis bytes per user" in printed and "MIMN paper: 4,500 bytes" in printed
