"""The embedded runtime's scheduler: Triton's dynamic batcher for one model version.

Requests queue on the replica's event loop; one execution at a time runs in the
runtime's executor. With `dynamic_batching`, queued requests whose non-batch
shapes and dtypes match are concatenated along dim 0 (up to `max_batch_size`,
cut at a preferred size when one fits, waiting at most `max_queue_delay`), run in
one forward and split back. Without it, each request runs alone. A batch that
fails is retried request by request so one bad request cannot fail its batch-mates.

One addition to Triton's rules, for closed-loop clients: right after an execution,
the clients it answered are about to send again. Starting at once with the few
requests that arrived during it splits one full batch into a small and a large one
(measured alternating 8/56 at 64 clients on a 4096-wide MLP), and the model pays a
whole execution for the small one. So while fewer samples are queued than the last
batch held, the scheduler also waits for those, at most a quarter of the last
execution (`FOLLOW_UP_WAIT_FRACTION`); a lone client never waits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from serve_app.errors import InternalError, ModelNotReadyError, ServeAppError, summarize
from serve_app.repository import DynamicBatching
from serve_app.runtimes.statistics import ModelStatistics
from serve_app.runtimes.torchscript import Timings, concatenate, split_batch

Tensors = dict[str, np.ndarray]
Execute = Callable[[Tensors], Awaitable[tuple[Tensors, Timings]]]

# The longest wait for the last batch's clients to send again, as a fraction of its execution.
FOLLOW_UP_WAIT_FRACTION = 0.25


@dataclass
class _Queued:
    inputs: Tensors
    batch_size: int
    key: tuple
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


def _batch_key(inputs: Tensors) -> tuple:
    """Requests can share a batch only if everything but dim 0 matches."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


class Scheduler:
    """Queue + batch former + single executor loop for one model version."""

    def __init__(
        self,
        execute: Execute,
        statistics: ModelStatistics,
        max_batch_size: int,
        batching: DynamicBatching | None,
    ) -> None:
        self._execute = execute
        self._statistics = statistics
        self._max_batch_size = max_batch_size
        self._batching = batching if max_batch_size > 0 else None
        self._queue: deque[_Queued] = deque()
        self._arrived = asyncio.Event()
        self._closed = False
        self._worker: asyncio.Task | None = None
        self._in_flight = 0
        # Samples in, and duration of, the last execution: see the module docstring.
        self._last_batch_size = 0
        self._last_execution_ns = 0

    async def submit(self, inputs: Tensors) -> Tensors:
        if self._closed:
            raise ModelNotReadyError("model is unloading")
        batch_size = next(iter(inputs.values())).shape[0] if self._max_batch_size > 0 else 1
        queued = _Queued(inputs, batch_size, _batch_key(inputs), asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        self._in_flight += 1
        self._arrived.set()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_forever())
        try:
            # Not shielded: a request its client gave up on is cancelled and never runs.
            return await queued.future
        finally:
            self._in_flight -= 1

    async def drain(self) -> None:
        """Refuse new requests and wait until every queued one has its answer."""
        self._closed = True
        while self._in_flight:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()

    async def _run_forever(self) -> None:
        while True:
            self._queue = deque(q for q in self._queue if not q.future.done())
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_batch()
            batch = [q for q in self._take() if not q.future.done()]
            if batch:
                started = time.perf_counter_ns()
                await self._run(batch)
                self._last_batch_size = sum(q.batch_size for q in batch)
                self._last_execution_ns = time.perf_counter_ns() - started

    async def _wait_for_batch(self) -> None:
        """Hold the queue's head until its batch is worth running.

        As Triton: up to max_queue_delay_microseconds from the head's arrival for the
        largest preferred batch size (else max_batch_size). Also, while fewer samples are
        ready than the last batch held, up to a quarter of the last execution for them.
        """
        if self._batching is None:
            return
        head = self._queue[0]
        target = max(self._batching.preferred_batch_sizes, default=self._max_batch_size)
        deadline = head.enqueued_ns + self._batching.max_queue_delay_us * 1000
        if self._ready_samples(head.key) < self._last_batch_size:
            target = min(target, self._last_batch_size)
            follow_up_ns = int(self._last_execution_ns * FOLLOW_UP_WAIT_FRACTION)
            deadline = max(deadline, time.perf_counter_ns() + follow_up_ns)
        while self._ready_samples(head.key) < target:
            remaining = (deadline - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return

    def _ready_samples(self, key: tuple) -> int:
        return sum(q.batch_size for q in self._queue if q.key == key)

    def _take(self) -> list[_Queued]:
        head = self._queue.popleft()
        batch = [head]
        if self._batching is None:
            return batch
        limit = self._max_batch_size
        available = min(limit, self._ready_samples(head.key) + head.batch_size)
        preferred = [p for p in self._batching.preferred_batch_sizes if p <= available]
        if preferred:
            limit = preferred[-1]
        size = head.batch_size
        kept: deque[_Queued] = deque()
        while self._queue:
            queued = self._queue.popleft()
            if queued.key == head.key and size + queued.batch_size <= limit:
                batch.append(queued)
                size += queued.batch_size
            else:
                kept.append(queued)
        self._queue = kept
        return batch

    async def _run(self, batch: list[_Queued]) -> None:
        started = time.perf_counter_ns()
        try:
            outputs, timings = await self._execute(concatenate([q.inputs for q in batch]))
            sizes = [q.batch_size for q in batch]
            pieces = split_batch(outputs, sizes, batched=self._max_batch_size > 0)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a per-request error
            if len(batch) > 1:
                for queued in batch:
                    await self._run([queued])
                return
            self._finish(batch[0], started, error=_as_error(exc))
            return
        self._statistics.record_execution(sum(q.batch_size for q in batch), len(batch), timings)
        for queued, piece in zip(batch, pieces, strict=True):
            self._finish(queued, started, result=piece)

    def _finish(
        self, queued: _Queued, started_ns: int, result: Tensors | None = None, error: Exception | None = None
    ) -> None:
        total_ns = time.perf_counter_ns() - queued.enqueued_ns
        self._statistics.record_request(error is None, total_ns, started_ns - queued.enqueued_ns)
        if queued.future.done():
            return
        if error is None:
            queued.future.set_result(result)
        else:
            queued.future.set_exception(error)


def _as_error(exc: Exception) -> ServeAppError:
    if isinstance(exc, ServeAppError):
        return exc
    return InternalError(f"model execution failed: {summarize(exc)}")
