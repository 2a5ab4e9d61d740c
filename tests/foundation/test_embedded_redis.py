"""devkit/redis_server.py: a real redis-server started, reached and stopped; the CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import redis

from devkit.ports import free_port
from devkit.redis_server import EmbeddedRedis, EmbeddedRedisError, find_redis_server
from uic.events import Event
from uic.store import connect, open_redis

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


def _cli(*args, password: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    if password is not None:
        env["REDIS_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "devkit.redis_server", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)


def test_cli_start_status_stop_and_restart_keeps_the_data(tmp_path):
    port = free_port()
    common = ["--port", str(port), "--dir", str(tmp_path)]
    url = f"redis://:pw@127.0.0.1:{port}/0"
    started = _cli("start", *common, password="pw")
    try:
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout and "appendfsync everysec" in started.stdout
        assert "pw" not in " ".join(psutil.Process(int((tmp_path / "redis.pid").read_text()))
                                    .cmdline())
        quick(url).set("kept", "1")  # the server outlives the CLI process
        status = _cli("status", *common, password="pw")
        assert status.returncode == 0 and "up on" in status.stdout and "AOF on" in status.stdout
        wrong = _cli("status", *common, password="nope")
        assert wrong.returncode == 1 and "rejected the password" in wrong.stderr
        again = _cli("start", *common, password="pw")
        assert again.returncode == 1 and "already in use" in again.stderr
        assert _cli("stop", *common, password="pw").returncode == 0
        assert _cli("start", *common, password="pw").returncode == 0
        assert quick(url).get("kept") == b"1"
    finally:
        stopped = _cli("stop", *common, password="pw")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    down = _cli("status", *common)
    assert down.returncode == 1 and "no redis answering" in down.stderr


def test_cli_help_and_bad_args():
    usage = " ".join(_cli("--help").stdout.split())
    assert "start" in usage and "loses about the last second" in usage and "--ephemeral" in usage
    bad = _cli("start", "--port", "99999")
    assert bad.returncode == 2 and "--port must be in 1..65535" in bad.stderr
    assert _cli("restart").returncode == 2


# -- durability: what survives a crash (SIGKILL, no SHUTDOWN) --------------------------------
STREAM, GROUP, DEAD = "uic:events", "uic-dien", "uic:dead"


def write_everything(store, tag: str, user_id: int) -> None:
    """One of each kind of state the system keeps in Redis: an interest state, a behaviour
    list, the event stream with an entry pending in a consumer group, a dead letter and the
    active-version pointer."""
    store.write_state("dien", 1, user_id, np.full(4, user_id, np.float32), 3, 1000 + user_id,
                      f"{tag}-e")
    store.append_behaviours([Event(user_id, 7, 8, "pv", 1000 + user_id, f"{tag}-b")])
    store.create_group(STREAM, GROUP, "0")
    store.add_to_stream(STREAM, [{"tag": tag}])
    store.read_new(STREAM, GROUP, "worker", count=100)  # delivered, not acked: pending
    store.add_to_stream(DEAD, [{"tag": tag}])
    store.set_active_version("dien", user_id)


def assert_everything_there(store, tag: str, user_id: int) -> None:
    state = store.read_state("dien", 1, user_id)
    assert state is not None and state.last_event_id == f"{tag}-e"
    assert state.state.tolist() == [float(user_id)] * 4
    assert f"{tag}-b" in [ev.event_id for ev in store.read_behaviours(user_id, 10)]
    pending = store.read_pending(STREAM, GROUP, "worker", count=100)
    assert {"tag": tag.encode()} in [entry.fields for entry in pending]
    dead = store.client.xrange(DEAD)
    assert {b"tag": tag.encode()} in [fields for _, fields in dead]


def test_a_crash_with_appendfsync_always_loses_no_acknowledged_write(tmp_path):
    server = EmbeddedRedis(data_dir=tmp_path, appendfsync="always").start()
    try:
        write_everything(connect(server.url), "last", 42)
        server.kill()  # SIGKILL: no SHUTDOWN, no final flush
        server.start()
        store = connect(server.url)
        assert_everything_there(store, "last", 42)
        assert store.get_active_version("dien") == 42
    finally:
        server.stop()


def test_a_crash_with_everysec_keeps_writes_older_than_the_fsync_window(tmp_path):
    """everysec fsyncs about once a second; writes older than two seconds are on disk."""
    server = EmbeddedRedis(data_dir=tmp_path).start()
    try:
        assert server.appendfsync == "everysec"
        write_everything(connect(server.url), "old", 1)
        time.sleep(2.5)  # let the background fsync run (the documented window is ~1 s)
        write_everything(connect(server.url), "recent", 2)  # may or may not survive
        server.kill()
        server.start()
        assert_everything_there(connect(server.url), "old", 1)
    finally:
        server.stop()


def test_a_clean_stop_keeps_everything_and_ephemeral_keeps_nothing(tmp_path):
    with EmbeddedRedis(data_dir=tmp_path / "durable") as server:
        write_everything(connect(server.url), "clean", 5)
        server.stop()
        server.start()
        assert_everything_there(connect(server.url), "clean", 5)
        info = server.client().info("persistence")
        assert info["aof_enabled"] == 1 and info["loading"] == 0
    with EmbeddedRedis(data_dir=tmp_path / "ephemeral", ephemeral=True) as server:
        write_everything(connect(server.url), "gone", 5)
        assert server.client().info("persistence")["aof_enabled"] == 0
        server.stop()
        server.start()
        assert server.client().dbsize() == 0


def test_the_password_is_in_no_command_line_nor_log(tmp_path):
    secret = "pw-" + "x7Kq2"  # built at run time, so this file's own text is no match
    with EmbeddedRedis(data_dir=tmp_path, password=secret) as server:
        assert open_redis(server.url).ping()
        # redis-server rewrites its /proc title once up, so check what it was started with too
        assert secret not in " ".join(server.process.argv)
        assert secret not in " ".join(psutil.Process(server.process.pid).cmdline())
        assert stat.S_IMODE(server.config_file.stat().st_mode) == 0o600
        assert f'requirepass "{secret}"' in server.config_file.read_text()
    assert secret not in server.log_file.read_text()


def test_config_values_are_quoted_and_control_characters_refused(tmp_path):
    odd = 'a b"c\\d #e'
    with EmbeddedRedis(data_dir=tmp_path, password=odd) as server:
        assert open_redis(server.url).ping()
    with pytest.raises(EmbeddedRedisError, match="control characters"):
        EmbeddedRedis(data_dir=tmp_path, password="a\nrequirepass b").start()
    with pytest.raises(EmbeddedRedisError, match="appendfsync must be one of"):
        EmbeddedRedis(appendfsync="no")
