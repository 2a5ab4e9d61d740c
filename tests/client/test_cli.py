"""The CLI end to end (real Redis + model server), and its input errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from client.__main__ import main
from tests.client.conftest import CAND_CATES, CAND_ITEMS


def _csv(values) -> str:
    return ",".join(str(int(v)) for v in values)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_cli_prints_a_table_with_the_scores(server, expected, seeded_store, redis_url, capsys,
                                            transport):
    port = server.grpc_port if transport == "grpc" else server.rest_port
    code = main(["score", "--user", "11", "--items", _csv(CAND_ITEMS), "--cates",
                 _csv(CAND_CATES), "--redis_url", redis_url, "--server", f"127.0.0.1:{port}",
                 "--transport", transport, "--model", "mimn"])
    out = capsys.readouterr().out
    assert code == 0, out
    head, timing, columns, *rows = out.splitlines()
    assert "model mimn v1" in head and "status fresh" in head and "events 23" in head
    assert timing.startswith("redis ") and "rpc" in timing
    assert columns.split() == ["rank", "item_id", "category_id", "score"]
    table = np.array([[float(x) for x in row.split()] for row in rows])
    np.testing.assert_array_equal(table[:, 1], CAND_ITEMS)
    np.testing.assert_allclose(table[:, 3], expected.scores[("mimn", 1, 11)], atol=1e-6)
    assert sorted(table[:, 0]) == list(range(1, len(CAND_ITEMS) + 1))


def test_cli_candidates_file_arch_a_and_json(server, expected, seeded_store, redis_url, capsys,
                                             tmp_path):
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps({"item_id": int(i), "category_id": int(c)}) + "\n"
                            for i, c in zip(CAND_ITEMS, CAND_CATES, strict=True)))
    code = main(["score", "--user", "12", "--candidates", str(path), "--arch", "A", "--json",
                 "--redis_url", redis_url, "--server", server.grpc_target])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "fresh" and result["served_model"] == "dien_full"
    np.testing.assert_allclose(result["scores"], expected.scores[("dien", 1, 12)], atol=1e-5)


@pytest.mark.parametrize("args, fragment", [
    (["--user", "abc", "--items", "1,2"], "--user must be a non-negative integer id, got 'abc'"),
    (["--user", "-3", "--items", "1,2"], "--user must be a non-negative integer id"),
    (["--user", "1", "--items", ""], "--items is empty"),
    (["--user", "1", "--items", "1,2", "--cates", "7"], "--items has 2 ids but --cates has 1"),
    (["--user", "1", "--items", "1,b"], "element 2 is 'b'"),
    (["--user", "1", "--candidates", "/nonexistent.csv"], "does not exist"),
    (["--user", "1", "--items", "1", "--server", "host:port"], "host:port"),
    (["--user", "1", "--items", "1", "--redis_url", "localhost:6390"], "bad Redis URL"),
    (["--user", "1", "--items", "1,2,3", "--max_candidates", "2"],
     "3 candidates in one request; at most 2 are allowed"),
    (["--user", "1", "--items", ",".join(["7"] * 10_001)],
     "10001 candidates in one request; at most 10000 are allowed"),
    (["--user", "1", "--items", "1", "--deadline_ms", "nan"], "must be positive numbers"),
])
def test_cli_bad_input_exits_2_with_a_message(args, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(["score", "--redis_url", "redis://127.0.0.1:1/0", *args])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_cli_unreachable_services_exit_1(capsys):
    code = main(["score", "--user", "1", "--items", "1,2", "--redis_url",
                 "redis://127.0.0.1:1/0", "--server", "127.0.0.1:1"])
    assert code == 1
    assert "Redis is unreachable" in capsys.readouterr().err


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "client", "score", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--user", "--items", "--cates", "--candidates", "--arch", "--transport",
                   "--model", "--redis_url", "--server"):
        assert option in out
