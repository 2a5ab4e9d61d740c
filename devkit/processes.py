"""The harness's one way to run a child process: start it, wait until it is ready, keep its
log, stop it.

Every server or job the harness starts (redis-server in `EmbeddedRedis`, the model server in
`ModelServerProcess`, the demo's Beam streaming jobs) is a `ChildProcess`:

* it runs in a session (process group) of its own, so Ctrl-C in the terminal reaches only
  the parent, which then stops its children in order, and a stop reaches the child's own
  children too;
* its stdout and stderr go to one log file, whose tail is quoted when it fails to start;
* it is ready when a condition given by the caller holds (PING answered, models AVAILABLE,
  consumer group created), never after a fixed sleep;
* it is stopped politely (its stop signal, SIGTERM unless told otherwise, or a request the
  caller gives, such as Redis' SHUTDOWN), then with SIGKILL once a grace period has passed.

::

    job = ChildProcess([sys.executable, "-m", "some.job"], name="job", log_path="job.log")
    job.start(ready=lambda: output_exists(), waiting_for="its first output", timeout=60)
    ...
    job.stop(grace_s=10)          # or: with ChildProcess(...) as job: (no readiness wait)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def _default_sigint() -> None:
    """Runs in the child before exec: SIGINT back to its default. A parent started in the
    background by a shell (`make test &`, a CI script) ignores SIGINT, children inherit that,
    and Python then installs no Ctrl-C handler, so a SIGINT stop would wait out the grace."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ProcessStartError(RuntimeError):
    """The child exited, or did not get ready in time, during start-up. The message names
    the child and quotes the end of its log."""


class ChildProcess:
    """One supervised child process; a context manager (start on enter, stop on exit).

    Args:
      argv: the command line.
      name: what messages call it (default: the program's file name).
      log_path: where its stdout and stderr go, appended (default: a new temporary file,
        kept after the stop so it can be read).
      env: its environment (default: this process's).
      cwd: its working directory (default: this process's).
      stop_signal: the polite stop request `stop()` sends to its process group.
    """

    def __init__(self, argv: Sequence[str | os.PathLike], *, name: str | None = None,
                 log_path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, stop_signal: int = signal.SIGTERM):
        self.argv = [os.fspath(a) for a in argv]
        if not self.argv:
            raise ValueError("ChildProcess needs a command line, got an empty argv")
        self.name = name or Path(self.argv[0]).name
        if log_path is None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
            handle, log_path = tempfile.mkstemp(prefix=f"{slug}_", suffix=".log")
            os.close(handle)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.popen: subprocess.Popen | None = None
        self._group_cleared = False

    # -- state ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited (negative: killed by that signal)."""
        return self.popen.poll() if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the child's log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, ready: Callable[[], bool] | None = None, *,
              waiting_for: str | Callable[[], str] = "start-up",
              timeout: float = 60.0) -> ChildProcess:
        """Start the child; with `ready`, return only once `ready()` is true (see
        `wait_until`). If it does not get ready, the child is stopped and the error raised."""
        if self.running:
            raise ProcessStartError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, env=self.env,
                                              cwd=self.cwd, start_new_session=True,
                                              preexec_fn=_default_sigint)
            except OSError as err:
                raise ProcessStartError(f"cannot start {self.name} ({self.argv[0]}): {err}") from err
        self._group_cleared = False
        if ready is not None:
            try:
                self.wait_until(ready, waiting_for, timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def wait_until(self, condition: Callable[[], bool], waiting_for: str | Callable[[], str],
                   timeout: float, poll_s: float = 0.05) -> None:
        """Poll `condition()` until it returns true. Raises ProcessStartError, quoting the log,
        if the child exits first or `timeout` seconds pass; an exception raised by
        `condition` (a fatal problem it detected) goes to the caller unchanged.
        `waiting_for` says what was awaited, for the message (a callable is asked when the
        message is written, so it can say what is still missing)."""

        def what() -> str:
            return waiting_for() if callable(waiting_for) else waiting_for

        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                code = self.returncode if self.popen is not None else "(never started)"
                raise ProcessStartError(
                    f"{self.name} exited with code {code} while waiting for {what()}; "
                    f"its log {self.log_path} ends with:\n{self.log_tail()}")
            if condition():
                return
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} was not ready after {timeout:g} s (waiting for "
                    f"{what()}); its log {self.log_path} ends with:\n{self.log_tail()}")
            time.sleep(poll_s)

    def stop(self, grace_s: float = 10.0, *,
             request: Callable[[], object] | None = None) -> int | None:
        """Ask the child to stop (`request()` if given, else its stop signal to its process
        group), wait up to `grace_s` seconds, then SIGKILL it. Whatever the child left in its
        process group is killed too. Returns the exit code (None if never started)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            asked = False
            if request is not None:
                try:
                    request()
                    asked = True
                except Exception:  # e.g. the server no longer answers: fall back to the signal
                    pass
            if not asked:
                self._signal_group(self.stop_signal)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait()
        if not self._group_cleared:
            self._signal_group(signal.SIGKILL)
            self._group_cleared = True
        return self.popen.returncode

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit code {self.returncode}"
        return f"ChildProcess({self.name!r}, pid={self.pid}, {state}, log={str(self.log_path)!r})"
