"""The embedded runtime's scheduler: Triton's dynamic batcher for one model version.

Requests queue FIFO on the replica's event loop. One batch former (as Triton's scheduler
thread) hands batches to `instances` workers, one per model instance, each running one
execution at a time in the model's executor. With `dynamic_batching`, the batch is the
longest run of queued requests from the head whose non-batch shapes and dtypes match, up
to `max_batch_size`, cut at the largest preferred size it reaches. As in Triton, it runs at
once when a preferred size (or the largest one, or `max_batch_size` when none is set) is
formed or the next request cannot join; otherwise it waits for batch-mates until the head
has waited `max_queue_delay_microseconds` (0: never waits). Without `dynamic_batching`
each request runs alone. A batch that fails is retried request by request, so one bad
request cannot fail its batch-mates; a request whose client gave up is never run (again).

One addition to Triton's rules, for closed-loop clients: right after an execution, the
clients it answered are about to send again. Starting at once with the few requests that
arrived during it splits one full batch into a small and a large one, alternating, and the
model pays a whole execution for the small one. So while fewer samples are queued than the
last batch held, the former also waits for those, at most a quarter of the last execution
(`FOLLOW_UP_WAIT_FRACTION`) and never more than `max_queue_delay_microseconds`; a lone
client never waits for it.

A fault in the scheduler itself (not in an execution) fails every waiting request and
refuses new ones (`failure`), so nothing hangs and the runtime reports itself unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from serve_app.errors import InternalError, ModelNotReadyError, ServeAppError, summarize
from serve_app.runtimes.torch.admission import DynamicBatching
from serve_app.runtimes.torch.statistics import ModelStatistics
from serve_app.runtimes.torch.torchscript import Timings, concatenate, split_batch

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
Execute = Callable[[Tensors], Awaitable[tuple[Tensors, Timings]]]

# The longest wait for the last batch's clients to send again, as a fraction of its execution.
FOLLOW_UP_WAIT_FRACTION = 0.25


@dataclass(eq=False, slots=True)  # eq=False: identity, for deque.remove
class _Queued:
    inputs: Tensors
    batch_size: int
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)
    waiting: bool = True  # in the queue; False once taken (or failed) by a worker
    _key: tuple | None = None

    def key(self) -> tuple:
        """Requests can share a batch only if everything but dim 0 matches.

        Computed when the batch former first compares it: a request that finds the queue
        empty (a lone client's every request) never needs it.
        """
        if self._key is None:
            self._key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(self.inputs.items()))
        return self._key


class Scheduler:
    """Queue, batch former and `instances` execution workers for one model version."""

    def __init__(
        self,
        execute: Execute,
        statistics: ModelStatistics,
        max_batch_size: int,
        batching: DynamicBatching | None,
        instances: int = 1,
    ) -> None:
        self._execute = execute
        self._statistics = statistics
        self._max_batch_size = max_batch_size
        self._batching = batching if max_batch_size > 0 else None
        self._instances = instances
        self._queue: deque[_Queued] = deque()
        self._arrived = asyncio.Event()
        self._forming = asyncio.Lock()  # one batch former at a time, as Triton's scheduler thread
        self._workers: list[asyncio.Task] = []
        self._closed = False
        self._failure: str | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()  # set once closed and every request has its answer
        self._running: list[int] = []  # start times of the executions running now
        # Samples in, and duration of, the last execution: see the module docstring.
        self._last_batch_size = 0
        self._last_execution_ns = 0

    @property
    def failure(self) -> str | None:
        """Why the scheduler stopped serving after a fault of its own; None while it works."""
        return self._failure

    @property
    def queued(self) -> int:
        """Requests waiting for a worker (not yet in an execution)."""
        return len(self._queue)

    def oldest_execution_ns(self) -> int | None:
        """perf_counter_ns start of the longest-running execution, None when none runs."""
        return min(self._running, default=None)

    async def submit(self, inputs: Tensors) -> Tensors:
        if self._closed:
            raise InternalError(self._failure) if self._failure else ModelNotReadyError("model is unloading")
        batch_size = next(iter(inputs.values())).shape[0] if self._max_batch_size > 0 else 1
        queued = _Queued(inputs, batch_size, asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        self._in_flight += 1
        self._arrived.set()
        if not self._workers:
            self._workers = [asyncio.create_task(self._work()) for _ in range(self._instances)]
        try:
            # Not shielded: a request its client gave up on is cancelled and never runs.
            return await queued.future
        except asyncio.CancelledError:
            if queued.waiting:
                self._queue.remove(queued)
                self._statistics.record_request(False, time.perf_counter_ns() - queued.enqueued_ns, 0)
            raise
        finally:
            self._in_flight -= 1
            if self._closed and not self._in_flight:
                self._idle.set()

    async def drain(self) -> None:
        """Refuse new requests and wait until every queued one has its answer."""
        self._closed = True
        if self._in_flight:
            await self._idle.wait()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        # A cancelled task keeps its traceback, whose frames hold this scheduler (and so the model):
        # let the tasks go, or the model's memory waits for the garbage collector's next full pass.
        self._workers = []

    async def _work(self) -> None:
        """One model instance: take a batch, run it; a fault here fails the scheduler, never hangs it."""
        batch: list[_Queued] = []
        try:
            while True:
                async with self._forming:
                    batch = await self._next_batch()
                started = time.perf_counter_ns()
                await self._run(batch)
                self._last_batch_size = sum(q.batch_size for q in batch)
                self._last_execution_ns = time.perf_counter_ns() - started
                batch = []
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave requests waiting forever
            self._fail(exc, batch)

    def _fail(self, exc: Exception, batch: list[_Queued]) -> None:
        self._failure = f"the scheduler failed: {summarize(exc)}"
        self._closed = True
        logger.error("%s; failing its requests", self._failure, exc_info=exc)
        for queued in (*batch, *self._queue):
            queued.waiting = False
            if not queued.future.done():
                queued.future.set_exception(InternalError(self._failure))
        self._queue.clear()

    async def _next_batch(self) -> list[_Queued]:
        """Wait for requests, hold them as long as the rules above say, take the batch (FIFO)."""
        held_since = 0
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            now = time.perf_counter_ns()
            held_since = held_since or now
            count, hold_until = self._plan(held_since)
            if hold_until <= now:
                return self._take(count)
            self._arrived.clear()
            # asyncio's TimeoutError: not the builtin before Python 3.11.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), (hold_until - now) / 1e9)

    def _plan(self, held_since_ns: int) -> tuple[int, int]:
        """(requests to take from the head, perf_counter_ns until which to hold them instead)."""
        batching = self._batching
        if batching is None:
            return 1, 0
        preferred = batching.preferred_batch_sizes
        largest = preferred[-1] if preferred else self._max_batch_size
        head = self._queue[0]
        count = samples = preferred_count = 0
        blocked = False  # the next request cannot join: it must wait for the next batch anyway
        for queued in self._queue:
            if count and (queued.key() != head.key() or samples + queued.batch_size > largest):
                blocked = True
                break
            count += 1
            samples += queued.batch_size
            if samples in preferred:
                preferred_count = count
        delay_ns = batching.max_queue_delay_us * 1000
        if not delay_ns:
            return preferred_count or count, 0
        formed = blocked or preferred_count > 0 or samples >= largest
        hold_until = 0 if formed else head.enqueued_ns + delay_ns
        if not blocked and samples < self._last_batch_size:
            follow_up_ns = min(delay_ns, int(self._last_execution_ns * FOLLOW_UP_WAIT_FRACTION))
            hold_until = max(hold_until, held_since_ns + follow_up_ns)
        return preferred_count or count, hold_until

    def _take(self, count: int) -> list[_Queued]:
        batch = [self._queue.popleft() for _ in range(count)]
        for queued in batch:
            queued.waiting = False
        return batch

    async def _run(self, batch: list[_Queued]) -> None:
        started = time.perf_counter_ns()
        try:
            pieces, timings = await self._execute_batch(batch)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a per-request error
            if len(batch) == 1:
                self._finish(batch[0], started, error=_as_error(exc))
                return
            for queued in batch:
                if queued.future.done():  # its client gave up meanwhile: never rerun, a failure
                    self._finish(queued, started)
                else:
                    await self._run([queued])
            return
        self._statistics.record_execution(sum(q.batch_size for q in batch), len(batch), timings)
        for queued, piece in zip(batch, pieces, strict=True):
            self._finish(queued, started, result=piece)

    async def _execute_batch(self, batch: list[_Queued]) -> tuple[list[Tensors], Timings]:
        """One model execution, tracked in `_running` while it lasts (the runtime's wedge check)."""
        started = time.perf_counter_ns()
        self._running.append(started)
        try:
            outputs, timings = await self._execute(concatenate([q.inputs for q in batch]))
        finally:
            self._running.remove(started)
        sizes = [q.batch_size for q in batch]
        return split_batch(outputs, sizes, batched=self._max_batch_size > 0), timings

    def _finish(
        self, queued: _Queued, started_ns: int, result: Tensors | None = None, error: Exception | None = None
    ) -> None:
        total_ns = time.perf_counter_ns() - queued.enqueued_ns
        if queued.future.done():  # cancelled during its execution: its client got no answer
            self._statistics.record_request(False, total_ns, 0)
            return
        self._statistics.record_request(error is None, total_ns, started_ns - queued.enqueued_ns)
        if error is None:
            queued.future.set_result(result)
        else:
            queued.future.set_exception(error)


def _as_error(exc: Exception) -> ServeAppError:
    if isinstance(exc, ServeAppError):
        return exc
    return InternalError(f"model execution failed: {summarize(exc)}")
