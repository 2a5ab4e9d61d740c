"""devkit/redis_server.py: a real redis-server started, reached and stopped; the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from devkit.ports import free_port
from devkit.redis_server import EmbeddedRedis, EmbeddedRedisError, find_redis_server
from uic.store import open_redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quick(url: str):
    """A client that fails at once (no retries) when the server is down or refuses it."""
    return open_redis(url, connect_timeout_s=0.5, retries=0)


def test_find_redis_server_gives_an_executable():
    path = find_redis_server()
    assert os.access(path, os.X_OK)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Redis server" in out


def test_start_stop_with_password(tmp_path):
    server = EmbeddedRedis(data_dir=tmp_path / "d", password="s3cret")
    with server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert open_redis(server.url).ping()
        with pytest.raises(redis.AuthenticationError):
            quick(f"redis://:wrong@127.0.0.1:{server.port}/0").ping()
        assert "Ready to accept connections" in (tmp_path / "d" / "redis.log").read_text()
        pid = server.process.pid
    assert server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the process is gone (reaped), not left behind
    with pytest.raises(redis.ConnectionError):
        quick(f"redis://127.0.0.1:{server.port}/0").ping()


def test_data_survives_a_restart_only_when_persisted_and_saved(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path, persist=True) as server:
        server.client().set("kept", "1")
        server.stop(save=True)
        server.start()
        assert server.client().get("kept") == b"1"
        server.client().set("dropped", "1")  # the default stop is SHUTDOWN NOSAVE
    with EmbeddedRedis(data_dir=tmp_path, persist=True) as server:
        assert server.client().get("kept") == b"1"
        assert server.client().get("dropped") is None


def test_temporary_data_dir_is_removed():
    server = EmbeddedRedis().start()
    data_dir = server.data_dir
    assert data_dir.is_dir()
    server.stop()
    assert not data_dir.exists()


def test_port_in_use_is_a_clear_error(redis_server):
    with pytest.raises(EmbeddedRedisError, match=f"port {redis_server.port} .* already in use"):
        EmbeddedRedis(port=redis_server.port).start()


def test_bad_arguments_fail_at_start_with_the_log(tmp_path):
    server = EmbeddedRedis(data_dir=tmp_path, extra_args=["--no-such-option", "1"])
    with pytest.raises(EmbeddedRedisError, match=r"(?s)exited with code \d+ while waiting for "
                       r"PING.*no-such-option"):
        server.start(timeout=30)
    assert server.process is None


def test_missing_binary_and_bad_port():
    with pytest.raises(EmbeddedRedisError, match="binary not found"):
        EmbeddedRedis(binary="/nonexistent/redis-server").start()
    with pytest.raises(EmbeddedRedisError, match="port must be an integer"):
        EmbeddedRedis(port=70000)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "devkit.redis_server", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_cli_start_status_stop(tmp_path):
    port = free_port()
    common = ["--port", str(port), "--dir", str(tmp_path), "--password", "pw"]
    started = _cli("start", *common)
    try:
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout
        assert quick(f"redis://:pw@127.0.0.1:{port}/0").ping()  # outlives the CLI process
        status = _cli("status", *common)
        assert status.returncode == 0 and "up on" in status.stdout
        wrong = _cli("status", "--port", str(port), "--password", "nope")
        assert wrong.returncode == 1 and "rejected the password" in wrong.stderr
        again = _cli("start", *common)
        assert again.returncode == 1 and "already in use" in again.stderr
    finally:
        stopped = _cli("stop", *common)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    down = _cli("status", *common)
    assert down.returncode == 1 and "no redis answering" in down.stderr


def test_cli_help_and_bad_args():
    assert "start" in _cli("--help").stdout
    bad = _cli("start", "--port", "99999")
    assert bad.returncode == 2 and "--port must be in 1..65535" in bad.stderr
    assert _cli("restart").returncode == 2
