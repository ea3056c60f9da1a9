"""The dynamic batcher (Scheduler) over a fake model: batching, delays, failures, drain."""

from __future__ import annotations

import asyncio
import time

import anyio
import numpy as np
import pytest

from serve_app.errors import InternalError, ModelNotReadyError
from serve_app.repository import DynamicBatching
from serve_app.runtimes.batching import Scheduler, Tensors
from serve_app.runtimes.statistics import ModelStatistics
from serve_app.runtimes.torchscript import Timings

pytestmark = pytest.mark.anyio

NO_DELAY = DynamicBatching(max_queue_delay_us=0, preferred_batch_sizes=())


class FakeModel:
    """Doubles `x` after `delay` s; records each execution's input shape; fails on negatives."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.executions: list[tuple[int, ...]] = []

    async def __call__(self, inputs: Tensors) -> tuple[Tensors, Timings]:
        self.executions.append(inputs["x"].shape)
        await asyncio.sleep(self.delay)
        if (inputs["x"] < 0).any():
            raise RuntimeError("Traceback (most recent call last):\n  ...\nValueError: negative input")
        return {"y": inputs["x"] * 2}, Timings(10, 20, 30)

    @property
    def batch_sizes(self) -> list[int]:
        return [shape[0] for shape in self.executions]


def sample(value: float, batch: int = 1, width: int = 3) -> Tensors:
    return {"x": np.full((batch, width), value, np.float32)}


async def submit_all(scheduler: Scheduler, requests: list[Tensors]) -> list[Tensors | BaseException]:
    with anyio.fail_after(5):
        return await asyncio.gather(*(scheduler.submit(r) for r in requests), return_exceptions=True)


def assert_doubled(results: list, requests: list[Tensors]) -> None:
    for result, request in zip(results, requests, strict=True):
        assert isinstance(result, dict), result
        np.testing.assert_array_equal(result["y"], request["x"] * 2)


async def test_concurrent_requests_are_concatenated_into_fewer_executions() -> None:
    model, stats = FakeModel(), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=8, batching=NO_DELAY)
    requests = [sample(i, batch=1 + i % 2) for i in range(6)]  # 9 samples
    results = await submit_all(scheduler, requests)
    assert_doubled(results, requests)
    assert sum(model.batch_sizes) == 9
    assert len(model.executions) < len(requests)
    assert max(model.batch_sizes) <= 8
    assert stats.execution_count == len(model.executions)
    assert stats.inference_count == 9
    assert stats.request["success"].count == 6


async def test_batches_never_exceed_max_batch_size() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=NO_DELAY)
    requests = [sample(i, batch=3) for i in range(2)] + [sample(i) for i in range(5)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert max(model.batch_sizes) <= 4 and sum(model.batch_sizes) == 11


async def test_differing_variable_dims_are_never_mixed() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    requests = [sample(i, width=3 + i % 2) for i in range(6)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert sorted(model.executions) == [(3, 3), (3, 4)]  # one batch per width, nothing retried


async def test_differing_dtypes_are_never_mixed() -> None:
    model = FakeModel()
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    requests = [{"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 2), np.float64)}]
    results = await submit_all(scheduler, requests)
    assert [r["y"].dtype for r in results] == [np.float32, np.float64]  # type: ignore[index]
    assert model.batch_sizes == [1, 1]


async def test_preferred_batch_size_cuts_batches() -> None:
    model = FakeModel()
    batching = DynamicBatching(max_queue_delay_us=0, preferred_batch_sizes=(2,))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=batching)
    requests = [sample(i) for i in range(5)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert model.batch_sizes == [2, 2, 1]


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


async def test_max_queue_delay_waits_for_batch_mates() -> None:
    model = FakeModel(delay=0)
    batching = DynamicBatching(max_queue_delay_us=300_000, preferred_batch_sizes=())
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=batching)
    start = time.perf_counter()

    async def late() -> Tensors:
        await asyncio.sleep(0.01)
        return await scheduler.submit(sample(2))

    with anyio.fail_after(5):
        first, second = await asyncio.gather(scheduler.submit(sample(1)), late())
    np.testing.assert_array_equal(first["y"], sample(1)["x"] * 2)
    elapsed = time.perf_counter() - start
    assert model.batch_sizes == [2]  # the late request joined the waiting one
    assert elapsed >= 0.29  # nothing filled the batch, so the full delay passed
    np.testing.assert_array_equal(second["y"], sample(2)["x"] * 2)


async def test_max_queue_delay_ends_early_when_the_batch_fills() -> None:
    model = FakeModel(delay=0)
    batching = DynamicBatching(max_queue_delay_us=5_000_000, preferred_batch_sizes=())
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=4, batching=batching)
    start = time.perf_counter()
    requests = [sample(i) for i in range(4)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert time.perf_counter() - start < 2.5
    assert model.batch_sizes == [4]


async def test_max_queue_delay_ends_early_at_the_largest_preferred_size() -> None:
    model = FakeModel(delay=0)
    batching = DynamicBatching(max_queue_delay_us=5_000_000, preferred_batch_sizes=(2,))
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=batching)
    start = time.perf_counter()
    requests = [sample(1), sample(2)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    assert time.perf_counter() - start < 2.5
    assert model.batch_sizes == [2]


async def closed_loop_clients(scheduler: Scheduler, clients: int, rounds: int, stagger_s: float) -> None:
    """Each client sends, waits for its answer, pauses `index * stagger_s` (its HTTP round trip), repeats."""

    async def client(index: int) -> None:
        for _ in range(rounds):
            request = sample(index)
            np.testing.assert_array_equal((await scheduler.submit(request))["y"], request["x"] * 2)
            await asyncio.sleep(index * stagger_s)

    with anyio.fail_after(5):
        await asyncio.gather(*(client(i) for i in range(clients)))


async def test_clients_just_answered_are_waited_for_so_batches_stay_full() -> None:
    # Without the follow-up wait the first client back runs alone and the rest form a
    # second batch during its execution: sizes alternate 1/7 instead of staying 8.
    model = FakeModel(delay=0.04)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    await closed_loop_clients(scheduler, clients=8, rounds=5, stagger_s=0.0005)
    assert model.batch_sizes == [8] * 5


async def test_the_follow_up_wait_is_bounded_by_a_quarter_of_the_last_execution() -> None:
    model = FakeModel(delay=0.08)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    requests = [sample(i) for i in range(4)]
    assert_doubled(await submit_all(scheduler, requests), requests)
    start = time.perf_counter()
    assert_doubled(await submit_all(scheduler, [sample(9)]), [sample(9)])  # three clients never return
    waited = time.perf_counter() - start - model.delay
    assert model.batch_sizes == [4, 1]
    assert 0.015 <= waited < 0.06  # ~0.02 s: a quarter of the 0.08 s execution, not the whole


async def test_a_lone_sequential_client_never_waits() -> None:
    model = FakeModel(delay=0.02)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=NO_DELAY)
    start = time.perf_counter()
    await closed_loop_clients(scheduler, clients=1, rounds=10, stagger_s=0)
    assert model.batch_sizes == [1] * 10
    assert time.perf_counter() - start < 10 * model.delay + 0.05  # the 1/4-execution wait never applied


async def test_a_failing_request_fails_alone_and_its_batch_mates_succeed() -> None:
    model, stats = FakeModel(), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=8, batching=NO_DELAY)
    requests = [sample(1), sample(-1), sample(3)]
    results = await submit_all(scheduler, requests)
    assert isinstance(results[1], InternalError)
    assert str(results[1]) == "model execution failed: ValueError: negative input"
    assert_doubled([results[0], results[2]], [requests[0], requests[2]])
    assert model.batch_sizes[0] == 3  # they were batched, then retried one by one
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
    model = FakeModel(delay=0.02)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=2, batching=NO_DELAY)
    requests = [sample(i) for i in range(6)]
    with anyio.fail_after(5):
        pending = asyncio.gather(*(scheduler.submit(r) for r in requests))
        await asyncio.sleep(0)  # all six are queued
        await scheduler.drain()
        assert pending.done()
        assert_doubled(pending.result(), requests)
    assert sum(model.batch_sizes) == 6
    with pytest.raises(ModelNotReadyError, match="unloading"):
        await scheduler.submit(sample(1))


async def test_request_statistics_split_queue_and_compute_time() -> None:
    model, stats = FakeModel(delay=0.02), ModelStatistics()
    scheduler = Scheduler(model, stats, max_batch_size=1, batching=NO_DELAY)
    await submit_all(scheduler, [sample(1), sample(2)])  # the second queues behind the first
    assert stats.request["success"].count == 2 and stats.request["queue"].count == 2
    assert stats.request["queue"].ns >= 15_000_000
    assert stats.request["success"].ns >= stats.request["queue"].ns + 2 * 15_000_000
    assert stats.request["compute_infer"].as_dict() == {"count": 2, "ns": 40}


async def test_a_cancelled_request_never_runs() -> None:
    model = FakeModel(delay=0.05)
    scheduler = Scheduler(model, ModelStatistics(), max_batch_size=8, batching=None)
    first = asyncio.create_task(scheduler.submit(sample(1.0)))
    abandoned = asyncio.create_task(scheduler.submit(sample(2.0)))
    await asyncio.sleep(0.01)  # the first is executing, the second queued behind it
    abandoned.cancel()
    with anyio.fail_after(5):
        result = await first
    await asyncio.sleep(0.1)
    np.testing.assert_array_equal(result["y"], sample(1.0)["x"] * 2)
    assert abandoned.cancelled()
    assert len(model.executions) == 1
    await scheduler.drain()
