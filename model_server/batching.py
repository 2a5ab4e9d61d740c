"""Server-side batching as TF Serving's BatchingSession does it.

Requests to the same signature of the same servable queue up; a shared pool of
`num_batch_threads` threads forms batches of at most `max_batch_size` rows (dim 0), waiting up
to `batch_timeout_micros` for a batch to fill, concatenates the inputs, runs the graph once
and slices the outputs back per request. Off unless `--enable_batching`, as in TF Serving.
Which signatures can be batched: docs/model_server.md, 'Batching'.
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
import threading
import time

import numpy as np

from model_server.errors import ServingError, invalid

log = logging.getLogger("model_server")


class _Task:
    __slots__ = ("inputs", "size", "enqueued", "done", "result", "error")

    def __init__(self, inputs, size):
        self.inputs = inputs
        self.size = size
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.result = None
        self.error = None


class BatchQueue:
    """The queue of one (servable version, signature); attached as `Signature.batcher`."""

    def __init__(self, scheduler: BatchScheduler, signature):
        self.scheduler = scheduler
        self.signature = signature
        self.tasks: collections.deque[_Task] = collections.deque()
        self.rows = 0
        self.closed = False

    def submit(self, inputs: dict[str, np.ndarray], timeout: float | None = None) -> dict:
        s = self.scheduler
        size = None
        for alias, array in inputs.items():
            if array.ndim == 0:
                raise invalid("Batching Run() input tensors must have at least one dimension "
                              f"(input '{alias}' is a scalar)")
            if size is None:
                size = array.shape[0]
            elif array.shape[0] != size:
                raise invalid("Batching Run() input tensors must have equal 0th-dimension size "
                              f"({', '.join(f'{a}: {x.shape[0]}' for a, x in inputs.items())})")
        if size > s.max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size "
                          f"{s.max_batch_size}")
        task = _Task(inputs, size)
        with s.cond:
            if self.closed:
                raise ServingError("UNAVAILABLE", "servable is being unloaded; retry")
            batches = -(-(self.rows + size) // s.max_batch_size)
            if batches > s.max_enqueued_batches:
                raise ServingError(
                    "UNAVAILABLE",
                    "The batch scheduling queue to which this task was submitted is full "
                    f"(max_enqueued_batches={s.max_enqueued_batches})")
            self.tasks.append(task)
            self.rows += size
            s.cond.notify()
        if not task.done.wait(timeout):
            raise ServingError("DEADLINE_EXCEEDED", "Deadline exceeded while waiting in the "
                               "batch queue")
        if task.error is not None:
            raise task.error
        return task.result

    # called with scheduler.cond held
    def ready_at(self) -> float | None:
        if not self.tasks:
            return None
        if self.rows >= self.scheduler.max_batch_size:
            return 0.0
        return self.tasks[0].enqueued + self.scheduler.timeout_s

    def take_batch(self) -> list[_Task]:
        limit = self.scheduler.max_batch_size
        batch, rows = [], 0
        while self.tasks and rows + self.tasks[0].size <= limit:
            task = self.tasks.popleft()
            rows += task.size
            batch.append(task)
        self.rows -= rows
        return batch


class BatchScheduler:
    """One shared thread pool for all batch queues (TF's SharedBatchScheduler)."""

    def __init__(self, params, metrics=None):
        def value(name, default):
            return getattr(params, name).value if params.HasField(name) else default

        self.max_batch_size = int(value("max_batch_size", 1000))
        self.timeout_s = value("batch_timeout_micros", 0) / 1e6
        self.max_enqueued_batches = int(value("max_enqueued_batches", 10))
        self.num_threads = int(value("num_batch_threads", os.cpu_count() or 1))
        self.pool_name = value("thread_pool_name", "batch_threads")
        self.allowed_sizes = list(params.allowed_batch_sizes)
        self.pad_variable_length = bool(params.pad_variable_length_inputs)
        self.metrics = metrics
        self.cond = threading.Condition()
        self.queues: list[BatchQueue] = []
        self._next = 0
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"{self.pool_name}_{i}",
                                          daemon=True) for i in range(self.num_threads)]
        for thread in self._threads:
            thread.start()

    def attach(self, loaded) -> None:
        """Give every callable signature of a newly loaded version its own queue."""
        with self.cond:
            for sig in loaded.signatures.values():
                if sig.function is not None:
                    queue = BatchQueue(self, sig)
                    self.queues.append(queue)
                    sig.batcher = queue

    def detach(self, loaded) -> None:
        """Stop accepting work for an unloading version; queued tasks still run."""
        with self.cond:
            for sig in loaded.signatures.values():
                if sig.batcher is not None:
                    sig.batcher.closed = True

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    def _pick(self):
        """A queue with a batch ready now, or the time the next one will be (cond held)."""
        now = time.monotonic()
        earliest = None
        n = len(self.queues)
        for i in range(n):
            queue = self.queues[(self._next + i) % n]
            at = queue.ready_at()
            if at is None:
                continue
            if at <= now:
                self._next = (self._next + i + 1) % max(n, 1)
                return queue, None
            earliest = at if earliest is None else min(earliest, at)
        return None, earliest

    def _work(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self._stopping:
                        return
                    queue, earliest = self._pick()
                    if queue is not None:
                        batch = queue.take_batch()
                        self.queues = [q for q in self.queues if not (q.closed and not q.tasks)]
                        break
                    self.cond.wait(None if earliest is None else max(earliest -
                                                                      time.monotonic(), 0))
            if batch:
                self._run(queue.signature, batch)

    def _run(self, signature, batch: list[_Task]) -> None:
        started = time.monotonic()
        if self.metrics is not None:
            for task in batch:
                self.metrics.queuing_latency.labels(self.pool_name).observe(
                    (started - task.enqueued) * 1e6)
                self.metrics.wrapped_run_count.inc()
        try:
            merged, target = self._merge(batch)
            outputs = signature.call(merged)
            outputs = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in outputs.items()}
            offset = 0
            for name, array in outputs.items():
                if array.ndim == 0 or array.shape[0] != target:
                    raise ServingError(
                        "FAILED_PRECONDITION",
                        f"Batched output tensor '{name}' has shape {list(array.shape)}: its 0th "
                        f"dimension must equal the batch size {target}")
            for task in batch:
                task.result = {k: v[offset:offset + task.size] for k, v in outputs.items()}
                offset += task.size
        except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
            error = exc if isinstance(exc, ServingError) else ServingError("INTERNAL", str(exc))
            for task in batch:
                task.error = error
        for task in batch:
            task.done.set()

    def _merge(self, batch: list[_Task]):
        rows = sum(t.size for t in batch)
        target = rows
        if self.allowed_sizes:
            i = bisect.bisect_left(self.allowed_sizes, rows)
            target = self.allowed_sizes[i] if i < len(self.allowed_sizes) else rows
        merged = {}
        for alias in batch[0].inputs:
            parts = [t.inputs[alias] for t in batch]
            tail = parts[0].shape[1:]
            if any(p.shape[1:] != tail for p in parts):
                if not self.pad_variable_length:
                    raise ServingError(
                        "FAILED_PRECONDITION",
                        f"Tensors with name '{alias}' from different tasks have different "
                        f"shapes and padding is turned off. Set pad_variable_length_inputs to "
                        f"true, or ensure that all tensors with the same name have equal "
                        f"dimensions starting with the first dim.")
                parts = _pad_parts(parts)
            if target > rows:
                last = parts[-1]
                filler = np.repeat(last[:1], target - rows, axis=0)
                parts = parts + [filler]
            merged[alias] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return merged, target


def _pad_parts(parts):
    """Pad every non-batch dim to the largest in the batch with each tensor's first element."""
    ndim = parts[0].ndim
    if any(p.ndim != ndim for p in parts):
        raise ServingError("FAILED_PRECONDITION",
                           "Tensors with the same name from different tasks have different ranks")
    largest = [max(p.shape[d] for p in parts) for d in range(1, ndim)]
    out = []
    for p in parts:
        pads = [(0, 0)] + [(0, m - s) for m, s in zip(largest, p.shape[1:], strict=False)]
        if any(after for _, after in pads):
            fill = p.flat[0] if p.size else 0
            p = np.pad(p, pads, mode="constant", constant_values=fill)
        out.append(p)
    return out
