"""Free TCP ports on loopback for the servers the harness starts (Redis, the model server).

A port found free can be taken by someone else before the server binds it; every caller
therefore starts its server with a readiness check that reports a bind failure clearly.
"""

from __future__ import annotations

import random
import socket

HOST = "127.0.0.1"


def free_port(also_free_offset: int | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now. With `also_free_offset`, `port + offset` is
    free too (a Redis Cluster node also listens on port + 10000 for its bus)."""
    if also_free_offset is None:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            return sock.getsockname()[1]
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randint(20000, 65535 - also_free_offset)
        if port_is_free(port) and port_is_free(port + also_free_offset):
            return port
    raise RuntimeError(f"could not find a free pair of ports (port, port + {also_free_offset}) "
                       f"on {HOST} in 200 tries; too many ports in use?")


def port_is_free(port: int) -> bool:
    """True when a server could listen on the port now. Uses SO_REUSEADDR, as servers do, so
    connections of a stopped server lingering in TIME_WAIT do not count as "in use"."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True
