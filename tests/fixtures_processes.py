"""pytest plugin: nothing a test session started outlives it.

The harness starts servers and jobs in sessions of their own (devkit.processes.ChildProcess),
so a Ctrl-C in a terminal reaches only their parent. The flip side: when a test is ended
early (pytest-timeout fails it, or a `subprocess.run` timeout kills the demo or the soak it
ran), nothing stops what was started, and a stream job or model server runs on for hours.

Fixture `reap_leftover_processes` (session, autouse) puts a token into this process's
environment before anything starts; every process started later inherits it, however deep,
and keeps it after being re-parented. At the end of the session whatever still carries the
token is stopped (SIGTERM, then SIGKILL) and a warning names it.
"""

from __future__ import annotations

import os
import uuid
import warnings

import psutil
import pytest

SESSION_TOKEN_VAR = "UIC_TEST_SESSION_TOKEN"


def processes_with_env(var: str, value: str) -> list[psutil.Process]:
    """Live processes whose environment has `var=value` (the environment a process was
    started with, so this process itself matches only if it inherited the value)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(var) == value:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def stop_processes(procs: list[psutil.Process], grace_s: float = 5.0) -> None:
    """SIGTERM `procs`, wait up to `grace_s` seconds, then SIGKILL what is left."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


@pytest.fixture(scope="session", autouse=True)
def reap_leftover_processes():
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    os.environ[SESSION_TOKEN_VAR] = token
    yield token
    left = [p for p in processes_with_env(SESSION_TOKEN_VAR, token) if p.pid != os.getpid()]
    if left:
        names = ", ".join(f"{p.pid} ({' '.join(_cmdline(p))[:120]})" for p in left)
        stop_processes(left)
        warnings.warn(f"stopped {len(left)} process(es) the tests left running: {names}",
                      stacklevel=1)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ["?"]
