"""Redis passwords never reach messages, reprs or CLI output: `uic.store.redact_url` in both
URL forms, `StoreConfig`'s repr, StoreErrors for a wrong password or an unreachable server,
and the producer's and the client's command lines against an unreachable Redis."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devkit.ports import free_port
from devkit.redis_server import EmbeddedRedis
from uic.store import StoreConfig, StoreError, open_redis, redact_url
from uic.store import connect as store_connect

SECRET = "s3cret-pw"


@pytest.mark.parametrize("url", [
    f"redis://user:{SECRET}@127.0.0.1:6390/0",
    f"redis://:{SECRET}@127.0.0.1:6390/0",
    f"rediss://user:{SECRET}@redis.example:6380/2",
    f"redis://127.0.0.1:6390/0?password={SECRET}",
    f"rediss://redis.example:6380/0?username=app&password={SECRET}&ssl_cert_reqs=required",
    f"redis://user:{SECRET}@node-1.example:7000/0?password={SECRET}",
])
def test_redact_url_hides_the_password(url):
    redacted = redact_url(url)
    assert SECRET not in redacted
    assert "***" in redacted
    assert redacted.split("://")[0] == url.split("://")[0]  # still says which server
    assert "6390" in redacted or "6380" in redacted or "7000" in redacted
    for cluster in (False, True):
        assert SECRET not in repr(StoreConfig(url, cluster=cluster))


def test_urls_without_a_password_are_unchanged():
    for url in ("redis://127.0.0.1:6390/0", "redis://user@h:1/0", "rediss://h:6380/1?db=2"):
        assert redact_url(url) == url


@pytest.fixture
def redis_with_password():
    """An own Redis that requires the password "right-pw"."""
    server = EmbeddedRedis(ephemeral=True).start()
    open_redis(server.url).config_set("requirepass", "right-pw")
    try:
        yield server
    finally:
        server.stop()


def test_store_errors_do_not_contain_the_password(redis_with_password):
    host, port = "127.0.0.1", redis_with_password.port
    dead = free_port()
    for url in (f"redis://default:{SECRET}@{host}:{port}/0",  # wrong password
                f"redis://{host}:{port}/0?password={SECRET}",
                f"redis://:{SECRET}@{host}:{dead}/0",  # unreachable
                f"redis://{host}:{dead}/0?password={SECRET}"):
        with pytest.raises(StoreError) as info:
            store_connect(url, connect_timeout_s=1, socket_timeout_s=1, retries=0)
        assert SECRET not in str(info.value), url
        assert SECRET not in repr(info.value), url
    store_connect(f"redis://:right-pw@{host}:{port}/0").client.ping()  # the right one works


def _run(args, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          cwd=tmp_path.parent, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(_repo())})


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


def test_clis_print_no_password(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"user_id": 1, "item_id": 2, "category_id": 3,
                                  "behavior_type": "pv", "event_time_ms": 1000,
                                  "event_id": "e1"}) + "\n")
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    runs = {
        "produce": _run(["-m", "beam_jobs.produce", "--redis_url", url, "--events", str(events),
                         "--quiet"], tmp_path),
        "client": _run(["-m", "client", "score", "--user", "1", "--items", "1,2",
                        "--redis_url", url, "--server", f"127.0.0.1:{free_port()}",
                        "--redis_timeout_ms", "300"], tmp_path),
        "client (query form)": _run(["-m", "client", "score", "--user", "1", "--items", "1",
                                     "--redis_url", url.replace(f":{SECRET}@", "@")
                                     + f"?password={SECRET}", "--redis_timeout_ms", "300"],
                                    tmp_path),
    }
    for name, run in runs.items():
        assert run.returncode != 0, (name, run.stdout, run.stderr)  # it did fail ...
        assert "Traceback" not in run.stderr, (name, run.stderr)
        assert SECRET not in run.stdout + run.stderr, (name, run.stdout, run.stderr)  # quietly
