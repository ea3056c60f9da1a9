"""InstanceThreads: results and errors come back on the loop, instances run side by side,
a cancelled call is dropped quietly, shutdown finishes what is queued."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest

from serve_app.runtimes.torch.instances import InstanceThreads

pytestmark = pytest.mark.anyio


async def test_results_and_errors_reach_the_caller() -> None:
    threads = InstanceThreads(1, "test")
    try:
        with anyio.fail_after(10):
            assert await threads.run(lambda x: (x * 2, threading.current_thread().name), 21) == (42, "test-0")
            with pytest.raises(ZeroDivisionError):
                await threads.run(lambda x: 1 / x, 0)
            assert await threads.run(str, 7) == "7"  # the thread survived the error
    finally:
        threads.shutdown()


async def test_instances_run_side_by_side() -> None:
    count = 3
    threads = InstanceThreads(count, "side")
    barrier = threading.Barrier(count, timeout=10)  # broken (an error) unless all run at once
    try:
        with anyio.fail_after(20):
            names = await asyncio.gather(
                *[
                    threads.run(lambda _: (barrier.wait(), threading.current_thread().name)[1], None)
                    for _ in range(count)
                ]
            )
        assert sorted(names) == [f"side-{n}" for n in range(count)]
    finally:
        threads.shutdown()


async def test_a_cancelled_call_is_dropped_and_shutdown_finishes_the_queue() -> None:
    threads = InstanceThreads(1, "cancel")
    gate = threading.Event()
    ran: list[int] = []

    def blocked(n: int) -> int:
        gate.wait(10)
        ran.append(n)
        return n

    with anyio.fail_after(20):
        first = asyncio.ensure_future(threads.run(blocked, 1))
        second = asyncio.ensure_future(threads.run(blocked, 2))
        await asyncio.sleep(0)
        first.cancel()
        gate.set()
        assert await second == 2
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.to_thread(threads.shutdown)
    assert ran == [1, 2]  # the cancelled call still ran (a thread cannot be interrupted)
    assert not any(thread.is_alive() for thread in threads._threads)
