"""Errors the client raises. Each message says what failed and what to do about it."""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every error raised by the client."""


class InvalidRequest(ClientError, ValueError):
    """The caller's input is wrong (bad user id, empty or malformed candidates, bad option)."""


class StateStoreUnavailable(ClientError):
    """Redis cannot be reached (or is too slow) and the configured fallback cannot help."""


class NotDeployed(ClientError):
    """Redis answers but holds no active version or cold-start state for the model."""


class ModelServerError(ClientError):
    """The model server answered with an error. `code` is the gRPC status name
    (e.g. ``NOT_FOUND``, ``INVALID_ARGUMENT``); `message` is the server's text."""

    def __init__(self, code: str, message: str, *, target: str = ""):
        self.code = code
        self.message = message
        self.target = target
        super().__init__(f"model server {target}: {code}: {message}" if target
                         else f"model server: {code}: {message}")


class ModelServerUnavailable(ModelServerError):
    """The model server cannot be reached, or stayed UNAVAILABLE through every retry."""

    def __init__(self, target: str, detail: str, attempts: int):
        self.attempts = attempts
        ClientError.__init__(
            self,
            f"model server at {target} is unavailable after {attempts} attempt(s): {detail}. "
            "Is it running? Start it with `make serve` (or `python -m model_server ...`) and "
            "check --server / --transport.",
        )
        self.code = "UNAVAILABLE"
        self.message = detail
        self.target = target
