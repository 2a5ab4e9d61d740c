"""What one request may make the server allocate, checked before anything is allocated.

A TensorProto or a JSON list declares its shape in a few bytes, and decoding it fills that
shape (TF's `Tensor::FromProto` repeats the last value). So every input's declared shape is
checked first: against `--max_request_candidates` for each dimension the signature leaves
free (the candidate or batch axis) and against the request's share of
`--max_request_tensor_bytes`; the signature's static dims are checked once decoded, so
decoding errors come first as in TF Serving. Failures are INVALID_ARGUMENT naming the input
and the flag, like TF Serving's own "Task size N is larger than maximum" batching refusal. Flags: docs/model_server.md, 'Security'.
"""

from __future__ import annotations

import dataclasses

from model_server.errors import invalid

MIB = 1024 * 1024
DEFAULT_MAX_TENSOR_BYTES = 64 * MIB
DEFAULT_MAX_CANDIDATES = 10_000
POINTER_BYTES = 8  # one element of a string tensor (numpy object array)


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Per-request bounds shared by the gRPC and REST front ends."""

    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES  # all input tensors of one request
    max_candidates: int = DEFAULT_MAX_CANDIDATES      # any free dim; examples per request

    def budget(self) -> RequestBudget:
        return RequestBudget(self)


class RequestBudget:
    """The bytes one request still may decode; `admit` each input before decoding it."""

    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self.left = limits.max_tensor_bytes

    def admit(self, sig, alias: str, shape: tuple[int, ...], itemsize: int,
              extra_bytes: int = 0) -> None:
        """Refuse `alias` of `shape` unless the candidate bound and the bytes left allow it;
        on success the bytes are taken from the budget. (The signature's static dims are
        checked by the caller after decoding, so decoding errors come first, as in TF
        Serving; decoding is already bounded here.)"""
        check_free_dims(sig, alias, shape, self.limits.max_candidates)
        size = 1
        for d in shape:
            size *= d
        needed = size * itemsize + extra_bytes
        if needed > self.left:
            raise invalid(
                f"input '{alias}' of shape {list(shape)} needs {needed} bytes, over the "
                f"{self.limits.max_tensor_bytes} bytes one request may use "
                f"(--max_request_tensor_bytes); send fewer values per request")
        self.left -= needed

    def admit_examples(self, count: int, total_bytes: int) -> None:
        """Classify/Regress/MultiInference: bound the number and bytes of tf.Examples."""
        if count > self.limits.max_candidates:
            raise invalid(f"input holds {count} examples, over the limit of "
                          f"{self.limits.max_candidates} per request (--max_request_candidates)")
        if total_bytes > self.left:
            raise invalid(f"input examples take {total_bytes} bytes, over the "
                          f"{self.limits.max_tensor_bytes} bytes one request may use "
                          f"(--max_request_tensor_bytes)")
        self.left -= total_bytes


def check_free_dims(sig, alias: str, shape: tuple[int, ...], max_candidates: int) -> None:
    """Each dimension the signature does not fix may hold at most `max_candidates`."""
    expected = sig.input_shapes.get(alias)
    for i, size in enumerate(shape):
        free = expected is None or i >= len(expected) or expected[i] < 0
        if free and size > max_candidates:
            raise invalid(
                f"input '{alias}' has {size} entries in dimension {i} (shape {list(shape)}), "
                f"over the limit of {max_candidates} per request (--max_request_candidates); "
                f"split the request")


DEFAULT_LIMITS = RequestLimits()
