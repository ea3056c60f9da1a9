"""The dynamic batcher (Scheduler) over a fake model: batching, delays, failures, cancellation, drain.

Deterministic: the fake model runs when its gate is open, and tests wait for queue states
by stepping the event loop (`until`), never by sleeping. The few tests that need a real
delay to pass only bound it from below, or against a much longer alternative.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import numpy as np
import pytest

from serve_app.errors import InternalError, ModelNotReadyError
from serve_app.runtimes.torch import batching
from serve_app.runtimes.torch.admission import DynamicBatching
from serve_app.runtimes.torch.batching import Scheduler, Tensors
from serve_app.runtimes.torch.statistics import ModelStatistics
from serve_app.runtimes.torch.torchscript import Timings

pytestmark = pytest.mark.anyio

NO_DELAY = DynamicBatching(max_queue_delay_us=0, preferred_batch_sizes=())
A_MINUTE_US = 60_000_000  # a queue delay no test may wait out: waiting it fails the test's time limit


class FakeModel:
    """Doubles `x` once its gate is open; records each execution's input shape; fails on negatives."""

    def __init__(self, gated: bool = False) -> None:
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.executions: list[tuple[int, ...]] = []

    async def __call__(self, inputs: Tensors) -> tuple[Tensors, Timings]:
        self.executions.append(inputs["x"].shape)
        await self.gate.wait()
        if (inputs["x"] < 0).any():
            raise RuntimeError("Traceback (most recent call last):\n  ...\nValueError: negative input")
        return {"y": inputs["x"] * 2}, Timings(10, 20, 30)

    @property
    def batch_sizes(self) -> list[int]:
        return [shape[0] for shape in self.executions]


def sample(value: float, batch: int = 1, width: int = 3) -> Tensors:
    return {"x": np.full((batch, width), value, np.float32)}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Step the event loop until `condition` holds; no timers, so no timing."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def settle() -> None:
    """Let every task that can make progress without a timer do so."""
    for _ in range(50):
        await asyncio.sleep(0)


def start(scheduler: Scheduler, requests: list[Tensors]) -> list[asyncio.Task]:
    return [asyncio.ensure_future(scheduler.submit(r)) for r in requests]


async def submit_all(scheduler: Scheduler, requests: list[Tensors]) -> list[Tensors | BaseException]:
    with anyio.fail_after(10):
        return await asyncio.gather(*(scheduler.submit(r) for r in requests), return_exceptions=True)


def assert_doubled(results: list, requests: list[Tensors]) -> None:
    for result, request in zip(results, requests, strict=True):
        assert isinstance(result, dict), result
        np.testing.assert_array_equal(result["y"], request["x"] * 2)


async def test_queued_requests_are_concatenated_fifo_up_to_max_batch_size() -> None:
    model, stats = FakeModel(), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=8, batching=NO_DELAY)
    requests = [sample(i, batch=1 + i % 2) for i in range(6)]  # sizes 1 2 1 2 1 2: 9 samples
    results = await submit_all(scheduler, requests)
    assert_doubled(results, requests)
    assert model.batch_sizes == [7, 2]  # the sixth would make 9 > 8: it heads the next batch
    assert stats.execution_count == 2 and stats.inference_count == 9
    assert stats.request["success"].count == 6


async def test_a_request_that_does_not_fit_ends_the_batch_and_nothing_overtakes_it() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=NO_DELAY)
    requests = [sample(1, batch=3), sample(2, batch=3), sample(3), sample(4), sample(5), sample(6)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert model.batch_sizes == [3, 4, 3]  # not [4 (3+1), 4 (3+1), 2]: FIFO, as Triton


async def test_differing_variable_dims_are_never_mixed_or_reordered() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    requests = [sample(i, width=w) for i, w in enumerate((3, 3, 4, 3))]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert model.executions == [(2, 3), (1, 4), (1, 3)]


async def test_differing_dtypes_are_never_mixed() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    requests = [{"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 2), np.float64)}]
    results = await submit_all(scheduler, requests)
    assert [r["y"].dtype for r in results] == [np.float32, np.float64]  # type: ignore[index]
    assert model.batch_sizes == [1, 1]


async def test_preferred_batch_size_cuts_batches() -> None:
    model = FakeModel()
    preferred = DynamicBatching(max_queue_delay_us=0, preferred_batch_sizes=(2,))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=preferred)
    requests = [sample(i) for i in range(5)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert model.batch_sizes == [2, 2, 1]


async def test_the_largest_preferred_size_formed_runs_without_waiting_for_a_larger_one() -> None:
    model = FakeModel()
    preferred = DynamicBatching(max_queue_delay_us=A_MINUTE_US, preferred_batch_sizes=(2, 3, 8))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=preferred)
    requests = [sample(1), sample(2), sample(3, batch=2)]  # forms 2, then 4 (not preferred)
    assert_doubled(await submit_all(scheduler, requests), requests)  # no minute-long wait for 8
    assert model.batch_sizes == [2, 2]


async def test_without_dynamic_batching_each_request_runs_alone() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=None)
    requests = [sample(i) for i in range(4)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert model.batch_sizes == [1, 1, 1, 1]


async def test_unbatched_model_ignores_dynamic_batching_and_passes_shapes_through() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=0, batching=NO_DELAY)
    requests = [{"x": np.ones((2, 3), np.float32)}, {"x": np.ones((2, 3), np.float32)}]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert model.executions == [(2, 3), (2, 3)]


async def test_max_queue_delay_holds_the_head_for_batch_mates_until_the_batch_fills() -> None:
    model = FakeModel()
    delayed = DynamicBatching(max_queue_delay_us=A_MINUTE_US, preferred_batch_sizes=())
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=2, batching=delayed)
    with anyio.fail_after(10):
        [first] = start(scheduler, [sample(1)])
        await settle()
        assert model.executions == [] and scheduler.queued == 1  # held, not run alone
        [second] = start(scheduler, [sample(2)])
        assert_doubled([await first, await second], [sample(1), sample(2)])
    assert model.batch_sizes == [2]


async def test_max_queue_delay_runs_what_is_queued_once_the_head_has_waited_it() -> None:
    model = FakeModel()
    delayed = DynamicBatching(max_queue_delay_us=50_000, preferred_batch_sizes=())
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=delayed)
    started = time.perf_counter()
    assert_doubled(await submit_all(scheduler, [sample(1)]), [sample(1)])
    assert time.perf_counter() - started >= 0.05  # nothing filled the batch: the whole delay passed
    assert model.batch_sizes == [1]


async def test_clients_just_answered_are_waited_for_so_batches_stay_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the follow-up wait the two clients back first run as a preferred batch of 2
    # and the other two follow as another: sizes 4, 2, 2 instead of 4, 4.
    monkeypatch.setattr(batching, "FOLLOW_UP_WAIT_FRACTION", 1e9)  # bounded by the delay alone
    model = FakeModel()
    delayed = DynamicBatching(max_queue_delay_us=A_MINUTE_US, preferred_batch_sizes=(2, 4))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=delayed)
    requests = [sample(i) for i in range(4)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    with anyio.fail_after(10):
        early = start(scheduler, requests[:2])
        await settle()
        assert model.batch_sizes == [4] and scheduler.queued == 2  # held for the other two
        late = start(scheduler, requests[2:])
        assert_doubled(await asyncio.gather(*early, *late), requests)
    assert model.batch_sizes == [4, 4]


async def test_the_follow_up_wait_is_bounded_by_max_queue_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "FOLLOW_UP_WAIT_FRACTION", 1e9)  # a quarter-execution bound never ends
    model = FakeModel()
    short = DynamicBatching(max_queue_delay_us=50_000, preferred_batch_sizes=(2, 4))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=short)
    requests = [sample(i) for i in range(4)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert_doubled(await submit_all(scheduler, requests[:2]), requests[:2])  # ends after 50 ms
    assert model.batch_sizes == [4, 2]


async def test_without_max_queue_delay_nothing_is_held_not_even_for_follow_ups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "FOLLOW_UP_WAIT_FRACTION", 1e9)
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=NO_DELAY)
    requests = [sample(i) for i in range(4)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    with anyio.fail_after(10):
        early = start(scheduler, requests[:2])
        await until(lambda: len(model.executions) == 2, "the two ran at once")
        assert_doubled(await asyncio.gather(*early), requests[:2])
    assert model.batch_sizes == [4, 2]


async def test_the_follow_up_wait_is_bounded_by_a_quarter_of_the_last_execution() -> None:
    model = FakeModel(gated=True)
    delayed = DynamicBatching(max_queue_delay_us=A_MINUTE_US, preferred_batch_sizes=(1, 4))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=delayed)
    requests = [sample(i) for i in range(4)]
    with anyio.fail_after(10):
        first = start(scheduler, requests)
        await until(lambda: model.executions == [(4, 3)], "the batch of four runs")
        await asyncio.sleep(0.2)  # the execution lasts at least 0.2 s
        model.gate.set()
        assert_doubled(await asyncio.gather(*first), requests)
        started = time.perf_counter()
        assert_doubled(await submit_all(scheduler, [sample(9)]), [sample(9)])  # three never return
    assert time.perf_counter() - started >= 0.05  # held a quarter of it, not the minute of the delay
    assert model.batch_sizes == [4, 1]


async def test_a_lone_sequential_client_is_never_held_for_follow_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batching, "FOLLOW_UP_WAIT_FRACTION", 1e9)
    model = FakeModel()
    delayed = DynamicBatching(max_queue_delay_us=A_MINUTE_US, preferred_batch_sizes=(1, 4))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=delayed)
    with anyio.fail_after(10):
        for i in range(5):
            assert_doubled([await scheduler.submit(sample(i))], [sample(i)])
    assert model.batch_sizes == [1] * 5


async def test_a_failing_request_fails_alone_and_its_batch_mates_succeed() -> None:
    model, stats = FakeModel(), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=8, batching=NO_DELAY)
    requests = [sample(1), sample(-1), sample(3)]
    results = await submit_all(scheduler, requests)
    assert isinstance(results[1], InternalError)
    assert str(results[1]) == "model execution failed: ValueError: negative input"
    assert_doubled([results[0], results[2]], [requests[0], requests[2]])
    assert model.batch_sizes == [3, 1, 1, 1]  # batched, then retried one by one
    assert stats.request["fail"].count == 1 and stats.request["success"].count == 2
    # The scheduler keeps serving.
    assert_doubled(await submit_all(scheduler, [sample(4)]), [sample(4)])


async def test_outputs_without_the_batch_dimension_fail_instead_of_hanging() -> None:
    async def reduce_batch(inputs: Tensors) -> tuple[Tensors, Timings]:
        return {"y": np.asarray(inputs["x"].sum())}, Timings(0, 0, 0)

    scheduler = Scheduler(reduce_batch, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    results = await submit_all(scheduler, [sample(1), sample(2)])
    assert all(isinstance(r, InternalError) for r in results)
    assert "output 'y' of shape [] for a batch of 1" in str(results[0])


async def test_drain_completes_queued_requests_then_refuses_new_ones() -> None:
    model = FakeModel(gated=True)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=2, batching=NO_DELAY)
    requests = [sample(i) for i in range(6)]
    with anyio.fail_after(10):
        pending = start(scheduler, requests)
        await until(lambda: scheduler.queued == 4, "the first batch runs, four wait")
        draining = asyncio.ensure_future(scheduler.drain())
        await settle()
        assert not draining.done()  # requests are still waiting for their answers
        model.gate.set()
        await draining
        assert all(p.done() for p in pending)
        assert_doubled([p.result() for p in pending], requests)
    assert model.batch_sizes == [2, 2, 2]
    with pytest.raises(ModelNotReadyError, match="unloading"):
        await scheduler.submit(sample(1))


async def test_request_statistics_split_queue_and_compute_time() -> None:
    model, stats = FakeModel(gated=True), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=1, batching=NO_DELAY)
    with anyio.fail_after(10):
        pending = start(scheduler, [sample(1), sample(2)])
        await until(lambda: scheduler.queued == 1, "the second queues behind the first")
        model.gate.set()
        await asyncio.gather(*pending)
    assert stats.request["success"].count == 2 and stats.request["queue"].count == 2
    assert stats.request["queue"].ns > 0  # the second waited for the first
    assert stats.request["success"].ns >= stats.request["queue"].ns
    assert stats.request["compute_infer"].as_dict() == {"count": 2, "ns": 40}


async def test_a_request_cancelled_while_queued_never_runs_and_counts_as_failed() -> None:
    model, stats = FakeModel(gated=True), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=8, batching=None)
    with anyio.fail_after(10):
        first, abandoned = start(scheduler, [sample(1.0), sample(2.0)])
        await until(lambda: scheduler.queued == 1, "the first executes, the second waits")
        abandoned.cancel()
        await until(lambda: scheduler.queued == 0, "the cancelled request leaves the queue")
        model.gate.set()
        assert_doubled([await first], [sample(1.0)])
        await settle()
    assert abandoned.cancelled()
    assert model.executions == [(1, 3)]
    assert stats.request["success"].count == 1 and stats.request["fail"].count == 1


async def test_a_request_cancelled_during_its_execution_is_not_a_success() -> None:
    model, stats = FakeModel(gated=True), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=8, batching=NO_DELAY)
    with anyio.fail_after(10):
        kept, abandoned = start(scheduler, [sample(1.0), sample(2.0)])
        await until(lambda: model.executions == [(2, 3)], "both execute together")
        abandoned.cancel()
        await settle()
        model.gate.set()
        assert_doubled([await kept], [sample(1.0)])
    assert abandoned.cancelled()
    assert stats.request["success"].count == 1 and stats.request["fail"].count == 1
    assert stats.inference_count == 2  # it did execute


async def test_a_request_cancelled_during_a_failing_batch_is_not_rerun() -> None:
    model, stats = FakeModel(gated=True), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=8, batching=NO_DELAY)
    with anyio.fail_after(10):
        good, abandoned, bad = start(scheduler, [sample(1.0), sample(2.0), sample(-1.0)])
        await until(lambda: model.executions == [(3, 3)], "the three execute together")
        abandoned.cancel()
        await settle()
        model.gate.set()
        assert_doubled([await good], [sample(1.0)])
        with pytest.raises(InternalError, match="negative input"):
            await bad
    assert model.batch_sizes == [3, 1, 1]  # the retry ran the good and the bad one, not the abandoned
    assert stats.request["success"].count == 1 and stats.request["fail"].count == 2


class BrokenStatistics(ModelStatistics):
    """A fault in the scheduler's own bookkeeping, outside any model execution."""

    def record_execution(self, batch_size: int, requests: int, timings: Timings) -> None:
        raise KeyError("bookkeeping bug")


async def test_a_fault_in_the_scheduler_fails_its_requests_instead_of_hanging_them() -> None:
    model = FakeModel(gated=True)
    scheduler = Scheduler(model, BrokenStatistics(), max_batch_size=2, batching=NO_DELAY)
    with anyio.fail_after(10):
        pending = start(scheduler, [sample(i) for i in range(4)])  # two execute, two wait
        await until(lambda: scheduler.queued == 2, "the first batch runs")
        model.gate.set()
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, InternalError) for r in results), results
        assert "the scheduler failed: 'bookkeeping bug'" in str(results[0])
        assert scheduler.failure == "the scheduler failed: 'bookkeeping bug'"
        with pytest.raises(InternalError, match="the scheduler failed"):
            await scheduler.submit(sample(1))
        await scheduler.drain()  # returns: nothing is left waiting


async def test_instances_run_batches_concurrently_and_report_the_oldest_execution() -> None:
    model = FakeModel(gated=True)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY, instances=2)
    assert scheduler.oldest_execution_ns() is None
    with anyio.fail_after(10):
        first = start(scheduler, [sample(1)])
        await until(lambda: len(model.executions) == 1, "the first executes")
        before = time.perf_counter_ns()
        second = start(scheduler, [sample(2), sample(3)])
        await until(lambda: len(model.executions) == 2, "the second instance takes the next batch")
        oldest = scheduler.oldest_execution_ns()
        assert oldest is not None and oldest < before
        model.gate.set()
        assert_doubled(await asyncio.gather(*first, *second), [sample(1), sample(2), sample(3)])
    assert model.batch_sizes == [1, 2]
    assert scheduler.oldest_execution_ns() is None


async def test_one_instance_runs_one_batch_at_a_time() -> None:
    model = FakeModel(gated=True)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    with anyio.fail_after(10):
        pending = start(scheduler, [sample(1)])
        await until(lambda: len(model.executions) == 1, "the first executes")
        pending += start(scheduler, [sample(2)])
        await settle()
        assert len(model.executions) == 1 and scheduler.queued == 1
        model.gate.set()
        await asyncio.gather(*pending)
    assert model.batch_sizes == [1, 1]
