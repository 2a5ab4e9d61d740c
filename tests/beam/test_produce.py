"""The producer CLI: rate-paced XADD of event files or synthetic events."""

from __future__ import annotations

from beam_jobs import produce
from uic.events import Event
from uic.store import open_redis

from .conftest import MALFORMED


def test_produce_file_and_synthetic(redis_url, events_data, capsys):
    path, events = events_data
    assert produce.main(["--events", str(path), "--redis_url", redis_url, "--stream", "s1",
                         "--rate", "0", "--quiet"]) == 0
    client = open_redis(redis_url)
    entries = client.xrange("s1")
    n_lines = sum(1 for line in path.read_text().splitlines() if line.strip())
    assert len(entries) == n_lines  # malformed lines too: the stream job dead-letters them
    sent = [f[b"event"].decode() for _, f in entries]
    assert [e.to_json() for e in events] == [p for p in sent if p not in MALFORMED]
    assert produce.main(["--synthetic", "50", "--redis_url", redis_url, "--stream", "s2",
                         "--rate", "500", "--limit", "20", "--quiet"]) == 0
    got = [Event.from_json(f[b"event"]) for _, f in client.xrange("s2")]
    assert len(got) == 20 and len({e.event_id for e in got}) == 20


def test_produce_rejects_bad_arguments(redis_url, tmp_path, capsys):
    assert produce.main(["--events", str(tmp_path / "missing.jsonl"), "--redis_url",
                         redis_url]) == 2
    assert "cannot read --events" in capsys.readouterr().err
    assert produce.main(["--synthetic", "5", "--rate", "-1", "--redis_url", redis_url]) == 2
    assert "--rate must be >= 0" in capsys.readouterr().err
    assert produce.main(["--synthetic", "5", "--maxlen", "0", "--redis_url", redis_url]) == 2
    assert "--maxlen must be >= 1" in capsys.readouterr().err
    assert produce.main(["--synthetic", "5", "--redis_url", "redis://127.0.0.1:1/0"]) == 2
    assert "cannot reach Redis" in capsys.readouterr().err
