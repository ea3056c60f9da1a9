"""A model version's instances: one thread each, fed by one queue.

`loop.run_in_executor` on a ThreadPoolExecutor costs several times more a call (a concurrent
future, its asyncio wrapper, the pool's bookkeeping) than a queue straight to a waiting
thread and one `call_soon_threadsafe` back. The torch runtime's
scheduler never runs more executions at once than there are instances, so no call waits here.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

Work = tuple[Callable[[Any], Any], Any, asyncio.AbstractEventLoop, asyncio.Future]


class InstanceThreads:
    """`count` threads that each run one call at a time; results come back on the caller's loop."""

    def __init__(self, count: int, name: str) -> None:
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{index}", daemon=True)
            for index in range(count)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, call: Callable[[Any], Any], argument: Any) -> Any:
        """`call(argument)` on one of the threads."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((call, argument, loop, future))
        return await future

    def shutdown(self, wait: bool = True) -> None:
        """The threads end after the calls already queued; `wait` joins them."""
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (work := self._queue.get()) is not None:
            call, argument, loop, future = work
            try:
                outcome: tuple[bool, Any] = (True, call(argument))
            except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting caller
                outcome = (False, exc)
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, future, outcome)
            del work, argument, future, outcome  # nothing of this call is held while waiting for the next


def _settle(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    if future.done():  # cancelled meanwhile
        return
    succeeded, value = outcome
    if succeeded:
        future.set_result(value)
    else:
        future.set_exception(value)
