"""Proposed serve_app patches, applied by monkeypatching so the benchmark can measure them.

Nothing here is imported by serve_app. `benchmarks.run --patched` serves
`benchmarks.patched:build_app`: the same deployment as `serve_app.app:build_app`,
defined in this module so that each replica imports it (and so applies the
patches) before its runtime starts. The patches, as they would land in serve_app:

1. `ModelSpec.signature()` is derived once per spec instead of on every request
   (serve_app/repository.py; it re-walks the protobuf config per request:
   ~15% of the replica event loop's CPU at 64 concurrent requests on a tiny model).
2. The dynamic batcher waits briefly after an execution for the clients it just
   answered (serve_app/runtimes/batching.py). With closed-loop clients and
   `max_queue_delay_microseconds: 0` the scheduler starts the next batch with
   the few requests that arrived during the last execution, before the answered
   clients can send again, so batches alternate small/large (measured: 8/56 and
   2/62 at 64 clients on the 4096 MLP) and a memory-bound model pays a full
   execution for a handful of samples. The wait ends as soon as as many samples
   as the last batch are ready, and never exceeds a quarter of the last execution.
3. `math.prod` instead of `np.prod` for the element count of each input.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from typing import Any

from ray import serve
from ray.serve import Application

PATCHES = ("signature-cache", "adaptive-batch-wait", "math-prod")
# Experiment knobs (environment of `serve run`, inherited by replicas): the adaptive wait's bound
# as a fraction of the last execution, and the interpreter's GIL switch interval (0: unchanged).
WAIT_FRACTION = float(os.environ.get("SERVE_APP_BENCH_WAIT_FRACTION", "0.25"))
SWITCH_INTERVAL_S = float(os.environ.get("SERVE_APP_BENCH_SWITCH_INTERVAL_S", "0"))
_applied = False


def apply() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    if SWITCH_INTERVAL_S > 0:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    _patch_signature_cache()
    _patch_batcher()
    _patch_prod()


def _patch_signature_cache() -> None:
    from serve_app.repository import ModelSignature, ModelSpec

    def signature(self: ModelSpec) -> ModelSignature:
        cached = self.__dict__.get("_signature")
        if cached is None:
            cached = ModelSignature.from_config(self.config_dict())
            object.__setattr__(self, "_signature", cached)  # frozen dataclass
        return cached

    ModelSpec.signature = signature


def _patch_batcher() -> None:
    from serve_app.runtimes import batching
    from serve_app.runtimes.batching import Scheduler

    original_run = Scheduler._run

    async def _run(self: Scheduler, batch: list) -> None:
        started = time.perf_counter_ns()
        await original_run(self, batch)
        self._last_batch = sum(q.batch_size for q in batch)
        self._last_execution_ns = time.perf_counter_ns() - started

    async def _wait_for_batch(self: Scheduler) -> None:
        if self._batching is None:
            return
        head = self._queue[0]
        target = max(self._batching.preferred_batch_sizes, default=self._max_batch_size)
        deadline = head.enqueued_ns + self._batching.max_queue_delay_us * 1000
        last = getattr(self, "_last_batch", 0)
        if last > self._ready_samples(head.key):
            target = min(target, last)
            wait_ns = int(getattr(self, "_last_execution_ns", 0) * WAIT_FRACTION)
            deadline = max(deadline, time.perf_counter_ns() + wait_ns)
        while self._ready_samples(head.key) < target:
            remaining = (deadline - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    Scheduler._run = _run
    Scheduler._wait_for_batch = _wait_for_batch
    assert batching.Scheduler is Scheduler


def _patch_prod() -> None:
    from serve_app import protocol

    class _NumpyShim:
        """`protocol.np` with `prod` replaced; everything else is numpy."""

        def __getattr__(self, name: str):
            return getattr(protocol_numpy, name)

        @staticmethod
        def prod(shape, dtype=None) -> int:
            return math.prod(shape)

    protocol_numpy = protocol.np
    protocol.np = _NumpyShim()


apply()

from serve_app import app as _app  # noqa: E402 - after the patches, like the replica sees it
from serve_app.config import parse_args  # noqa: E402


class PatchedInferenceServer(_app.InferenceServer.func_or_class):
    """serve_app's deployment class, importable from here so replicas load the patches."""


PatchedServer = serve.deployment(
    name="InferenceServer", max_ongoing_requests=64, graceful_shutdown_timeout_s=30, health_check_period_s=10
)(PatchedInferenceServer)


def build_app(args: dict[str, Any]) -> Application:
    """`serve_app.app:build_app` with this module's deployment class."""
    return PatchedServer.bind(parse_args(args))
