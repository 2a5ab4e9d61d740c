"""The server's errors: TF-style status errors for requests, StartupError for startup.

TF Serving passes a canonical status code through gRPC unchanged and maps it to an HTTP
status for REST. Raising one exception type everywhere lets both front ends render the same
failure the way each protocol expects.
"""

from __future__ import annotations

import grpc

# canonical code name -> (grpc.StatusCode, HTTP status)
_CODES: dict[str, tuple[grpc.StatusCode, int]] = {
    "OK": (grpc.StatusCode.OK, 200),
    "CANCELLED": (grpc.StatusCode.CANCELLED, 499),
    "UNKNOWN": (grpc.StatusCode.UNKNOWN, 500),
    "INVALID_ARGUMENT": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "DEADLINE_EXCEEDED": (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    "NOT_FOUND": (grpc.StatusCode.NOT_FOUND, 404),
    "ALREADY_EXISTS": (grpc.StatusCode.ALREADY_EXISTS, 409),
    "PERMISSION_DENIED": (grpc.StatusCode.PERMISSION_DENIED, 403),
    "RESOURCE_EXHAUSTED": (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    "FAILED_PRECONDITION": (grpc.StatusCode.FAILED_PRECONDITION, 400),
    "ABORTED": (grpc.StatusCode.ABORTED, 409),
    "OUT_OF_RANGE": (grpc.StatusCode.OUT_OF_RANGE, 400),
    "UNIMPLEMENTED": (grpc.StatusCode.UNIMPLEMENTED, 501),
    "INTERNAL": (grpc.StatusCode.INTERNAL, 500),
    "UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, 503),
    "DATA_LOSS": (grpc.StatusCode.DATA_LOSS, 500),
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, 401),
}

# tensorflow.error.Code enum numbers (used in StatusProto.error_code)
CODE_NUMBERS: dict[str, int] = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

GRPC_MESSAGE_LIMIT = 1024


class StartupError(Exception):
    """Flags or config files the server cannot start with; `main` prints
    `Failed to start server. Error: <message>` and exits 1, as TF Serving does."""


class ServingError(Exception):
    """A failure with a TF canonical status code (e.g. "NOT_FOUND") and message."""

    def __init__(self, code: str, message: str, http_status: int | None = None):
        if code not in _CODES:
            raise ValueError(f"unknown status code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self._http_status = http_status  # overrides the code's usual HTTP status

    @property
    def http_status(self) -> int:
        return self._http_status or _CODES[self.code][1]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return _CODES[self.code][0]

    def grpc_details(self) -> str:
        """The message as TF Serving sends it over gRPC (truncated at 1024 bytes)."""
        raw = self.message.encode("utf-8")
        if len(raw) <= GRPC_MESSAGE_LIMIT:
            return self.message
        return raw[:GRPC_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"

    def __repr__(self) -> str:
        return f"ServingError({self.code}, {self.message!r})"


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def from_tf_exception(exc: BaseException) -> ServingError:
    """Map an exception raised while running a TF function to a canonical status."""
    if isinstance(exc, ServingError):
        return exc
    try:
        import tensorflow as tf

        if isinstance(exc, tf.errors.OpError):
            code = _TF_CODE_NAMES.get(int(exc.error_code), "UNKNOWN")
            return ServingError(code, exc.message)
    except ImportError:  # pragma: no cover - TF is always present in the server
        pass
    if isinstance(exc, (TypeError, ValueError)):
        return ServingError("INVALID_ARGUMENT", str(exc))
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


_TF_CODE_NAMES = {number: name for name, number in CODE_NUMBERS.items()}
