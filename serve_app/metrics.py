"""Triton's Prometheus metrics (`nv_inference_*`, `nv_gpu_*`) for each replica, through Ray's metrics.

A `/metrics` route would answer for whichever replica a scrape landed on. Ray's metrics agent on
every node instead exports the series of every replica on that node (`ray.serve.metrics` tags
them with deployment, replica and application), on the port Ray's Prometheus discovery names,
beside Serve's own `ray_serve_*` series. Ray prefixes the names: `ray_nv_inference_...`.

Two sources, merged every `interval_s` by one background task:
- the runtime's cumulative statistics (Triton's `/v2/models/stats` format, both runtimes): their
  increase since the last read becomes counter increments, so the counters agree with the
  statistics (a total that went down is a reloaded model: counted from zero again);
- what the dataplane saw (`observe`, `rejected`): requests refused before the runtime (Triton
  counts them as REJECTED failures; the runtime never sees them), requests in flight,
  cancellations and each request's latency. Per request that is plain-Python bookkeeping; Ray's
  metrics are only touched by the background task.

The latency histogram is counted here, in cumulative buckets, and exported as Prometheus
histogram series (`_bucket{le}`, `_sum`, `_count`) held in Ray gauges: a Ray `Histogram.observe`
per request would cost a sizeable share of a tiny model's request in Ray's recorder.

On-demand placement adds the replica's model cache (`serve_app_*`): its counters (hits, misses,
loads, unloads by reason) read every interval, its load times as a histogram of the same kind, and
what it holds against its budget. A model's statistics leave the runtime with the model, so the
cache tells the metrics before each unload and what they counted since the last read is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from ray.serve import metrics as serve_metrics

from serve_app.gpu_metrics import GpuReader
from serve_app.metric_series import (
    BACKEND,
    CACHE_REQUESTS,
    CANCELED,
    FAILURE,
    GPU_GAUGES,
    LATENCY,
    LATENCY_BUCKETS_MS,
    LOAD_BUCKETS_S,
    LOAD_DURATION,
    LOADED_BYTES,
    LOADED_MODELS,
    MAX_MODELS,
    MEMORY_BUDGET,
    MODEL_LOADS,
    MODEL_TAGS,
    MODEL_UNLOADS,
    PENDING,
    PLACEMENT_GAUGES,
    REJECTED,
    STATISTICS_COUNTERS,
    Histogram,
    Sample,
)
from serve_app.residency.types import Budget, Counters
from serve_app.runtimes.base import Runtime

logger = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]  # (model, version)

_DURATIONS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


class _Totals(NamedTuple):
    """A model version's cumulative statistics, in the order of STATISTICS_COUNTERS, then failures."""

    success: int
    inferences: int
    executions: int
    request_us: float
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    failures: int

    @classmethod
    def from_statistics(cls, stats: dict[str, Any]) -> _Totals:
        phases = stats["inference_stats"]
        return cls(
            phases["success"]["count"],
            stats["inference_count"],
            stats["execution_count"],
            *(phases[p]["ns"] / 1000 for p in _DURATIONS),
            phases["fail"]["count"],
        )

    def since(self, before: _Totals | None) -> _Totals:
        """The increase over `before`; everything, when any total went down (reload: a reset)."""
        if before is None or any(now < then for now, then in zip(self, before, strict=True)):
            return self
        return _Totals(*(now - then for now, then in zip(self, before, strict=True)))


@dataclass(slots=True)
class _Outcomes:
    """What the dataplane saw of one model version: counts since the last collection, latencies
    since the replica started."""

    in_flight: int = 0
    rejected: int = 0
    canceled: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY, LATENCY_BUCKETS_MS))


def _tags(key: Key) -> dict[str, str]:
    return {"model": key[0], "version": key[1]}


class Residency(Protocol):
    """What the metrics read of on-demand placement (serve_app.residency.ModelCache)."""

    counters: Counters

    @property
    def budget(self) -> Budget: ...

    def resident(self) -> list[str]: ...

    def resident_bytes(self) -> int: ...

    def before_unload(self, listener: Callable[[str], None]) -> None: ...


class _PlacementReader:
    """The model cache's counters as increments since the last read, and its state as gauges."""

    def __init__(self, cache: Residency) -> None:
        self._cache = cache
        self._seen = Counters()  # the counters at the last read
        self._load_time = Histogram(LOAD_DURATION, LOAD_BUCKETS_S)

    def read(self) -> list[Sample]:
        counters, seen = self._cache.counters, self._seen
        taken, counters.load_seconds = counters.load_seconds, []
        for seconds in taken:
            self._load_time.observe(seconds)
        increments = [
            Sample(MODEL_LOADS, counters.loads - seen.loads, {}),
            Sample(CACHE_REQUESTS, counters.hits - seen.hits, {"result": "hit"}),
            Sample(CACHE_REQUESTS, counters.misses - seen.misses, {"result": "miss"}),
            *(
                Sample(MODEL_UNLOADS, count - seen.unloads.get(reason, 0), {"reason": reason})
                for reason, count in counters.unloads.items()
            ),
        ]
        self._seen = Counters(counters.hits, counters.misses, counters.loads, unloads=dict(counters.unloads))
        budget = self._cache.budget
        gauges = {
            LOADED_MODELS: len(self._cache.resident()),
            LOADED_BYTES: self._cache.resident_bytes(),
            MAX_MODELS: budget.max_models,  # None: no bound, no series
            MEMORY_BUDGET: budget.memory_bytes,
        }
        return [
            *(sample for sample in increments if sample.value > 0),
            *self._load_time.samples({}),
            *(Sample(name, value, {}) for name, value in gauges.items() if value is not None),
        ]


class ReplicaMetrics:
    """The replica's metrics: the dataplane's observer, and the task that exports every interval.

    `residency`: the replica's model cache under on-demand placement (None: every model resident,
    nothing to add)."""

    def __init__(
        self,
        runtime: Runtime,
        interval_s: float,
        gpu_ids: tuple[str, ...] = (),
        residency: Residency | None = None,
    ) -> None:
        self._runtime = runtime
        self._interval_s = interval_s
        self._outcomes: dict[Key, _Outcomes] = {}
        self._totals: dict[Key, _Totals] = {}
        self._unloaded: list[Sample] = []  # counted from the statistics of models unloaded since
        # Cancellations seen by the dataplane that the runtime's statistics had not counted yet.
        self._unmatched_cancels: dict[Key, int] = {}
        self._gpus = GpuReader.open(gpu_ids) if gpu_ids else None
        self._placement = None if residency is None else _PlacementReader(residency)
        if residency is not None:
            residency.before_unload(self._unloading)
        self._instruments = _Instruments(gpu=self._gpus is not None, placement=residency is not None)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    # --- the dataplane's observer (per request: no Ray calls) --------------------------------

    def rejected(self, model: str, version: str) -> None:
        """A request refused before it reached the runtime (bad inputs or parameters)."""
        self._record((model, version)).rejected += 1

    async def observe(self, model: str, version: str, call: Awaitable[T]) -> T:
        """Await the runtime's answer, counting it in flight meanwhile and timing a success."""
        key = (model, version)
        record = self._outcomes.get(key) or self._record(key)
        record.in_flight += 1
        started = time.perf_counter()
        try:
            result = await call
        except asyncio.CancelledError:
            record.canceled += 1
            raise
        finally:
            record.in_flight -= 1
        record.latency.observe((time.perf_counter() - started) * 1000)
        return result

    def _record(self, key: Key) -> _Outcomes:
        record = self._outcomes.get(key)
        if record is None:
            record = self._outcomes[key] = _Outcomes()
        return record

    # --- collection and export ---------------------------------------------------------------

    def collect(self) -> list[Sample]:
        """Everything since the last call, as metric updates."""
        samples, self._unloaded = self._unloaded, []
        samples += self._from_statistics()
        for key, record in self._outcomes.items():
            tags = _tags(key)
            samples.append(Sample(PENDING, record.in_flight, tags))
            if record.rejected:
                samples.append(Sample(FAILURE, record.rejected, {**tags, "reason": REJECTED}))
            samples += record.latency.samples(tags)
            record.rejected = record.canceled = 0
        if self._gpus is not None:
            samples += self._gpus.read()
        if self._placement is not None:
            samples += self._placement.read()
        return samples

    def _from_statistics(self) -> Iterator[Sample]:
        stats = self._runtime.statistics(None, None)["model_stats"]
        current = {(s["name"], str(s["version"])): _Totals.from_statistics(s) for s in stats}
        for key, totals in current.items():
            yield from self._increments(key, totals)
        self._totals = current  # an unloaded version drops out: a reload counts from zero

    def _increments(self, key: Key, totals: _Totals) -> Iterator[Sample]:
        delta = totals.since(self._totals.get(key))
        tags = _tags(key)
        for name, value in zip(STATISTICS_COUNTERS, delta, strict=False):
            if value > 0:
                yield Sample(name, value, tags)
        for reason, count in self._split_failures(key, delta.failures):
            yield Sample(FAILURE, count, {**tags, "reason": reason})

    def _unloading(self, model: str) -> None:
        """The cache is about to unload `model`: keep what its statistics counted since the last
        read for the next export (a model evicted right after its requests would count nothing)."""
        try:
            stats = self._runtime.statistics(model, None)["model_stats"]
            for entry in stats:
                key = (entry["name"], str(entry["version"]))
                self._unloaded += self._increments(key, _Totals.from_statistics(entry))
                self._totals.pop(key, None)  # loaded again, it counts from zero
                if key in self._outcomes:
                    self._outcomes[key].canceled = 0  # matched against these failures
        except Exception as exc:  # noqa: BLE001 - an unload must not fail for its metrics
            logger.warning("statistics of model '%s' before its unload not counted: %s", model, exc)

    def _split_failures(self, key: Key, failures: int) -> Iterator[tuple[str, int]]:
        """The runtime's failures by Triton's reason: its statistics only count them.

        As many as the dataplane saw cancelled are CANCELED (the runtime may count a cancellation
        an interval after the dataplane saw it, so unmatched ones wait one interval), the rest
        BACKEND (the runtime or its model failed them).
        """
        seen = self._outcomes[key].canceled if key in self._outcomes else 0
        available = seen + self._unmatched_cancels.pop(key, 0)
        canceled = min(failures, available)
        if available - canceled and seen:
            self._unmatched_cancels[key] = min(available - canceled, seen)
        if canceled:
            yield CANCELED, canceled
        if failures - canceled:
            yield BACKEND, failures - canceled

    def export(self) -> None:
        """Collect and hand the updates to Ray's metrics (the node's agent exports them)."""
        self._instruments.record(self.collect())

    # --- the background task -----------------------------------------------------------------

    def start(self) -> None:
        """Start exporting every interval (from the replica's event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="serve_app metrics")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self.export()
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - metrics must never take the replica down
                if not self._failing:  # once per run of failures, not every interval
                    logger.warning("metrics export failed (retrying every %.1f s): %s", self._interval_s, exc)
                self._failing = True

    async def stop(self) -> None:
        """Stop the task and export what the last interval counted."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):  # the runtime may already be unusable
            self.export()


class _Instruments:
    """The Ray metric objects, one per name, created once per replica."""

    def __init__(self, gpu: bool, placement: bool) -> None:
        self._counters = {
            name: serve_metrics.Counter(name, description=text, tag_keys=MODEL_TAGS)
            for name, text in STATISTICS_COUNTERS.items()
        }
        self._counters[FAILURE] = serve_metrics.Counter(
            FAILURE, description="Number of failed inference requests, all batch sizes, by reason",
            tag_keys=(*MODEL_TAGS, "reason"),
        )  # fmt: skip
        self._gauges = {
            PENDING: serve_metrics.Gauge(
                PENDING, description="Requests in the runtime, not yet answered (queued or executing)",
                tag_keys=MODEL_TAGS,
            )
        }  # fmt: skip
        if gpu:
            for name, text in GPU_GAUGES.items():
                self._gauges[name] = serve_metrics.Gauge(name, description=text, tag_keys=("gpu_uuid",))
        latency = "latency of successful inference requests in the dataplane (validated request handed "
        "to the runtime until its outputs), milliseconds"
        self._add_histogram(LATENCY, latency, MODEL_TAGS)
        if placement:
            self._add_placement()

    def _add_histogram(self, name: str, what: str, tag_keys: tuple[str, ...]) -> None:
        """The gauges that hold a histogram's `_bucket{le}`, `_sum` and `_count` series."""
        for suffix, series, keys in [
            ("bucket", "Histogram buckets (cumulative counts) of the", (*tag_keys, "le")),
            ("sum", "Sum of the", tag_keys),
            ("count", "Count of the", tag_keys),
        ]:
            self._gauges[f"{name}_{suffix}"] = serve_metrics.Gauge(
                f"{name}_{suffix}", description=f"{series} {what}", tag_keys=keys
            )

    def _add_placement(self) -> None:
        """On-demand placement's series (mode all has none)."""
        for name, text, tag_keys in [
            (MODEL_LOADS, "Models loaded on the replica for requests", ()),
            (MODEL_UNLOADS, "Models unloaded (idle, evicted) or failed to load (failed)", ("reason",)),
            (CACHE_REQUESTS, "Inference requests whose model was resident (hit) or not (miss)", ("result",)),
        ]:
            self._counters[name] = serve_metrics.Counter(name, description=text, tag_keys=tag_keys)
        for name, text in PLACEMENT_GAUGES.items():
            self._gauges[name] = serve_metrics.Gauge(name, description=text, tag_keys=())
        self._add_histogram(LOAD_DURATION, "load times of models loaded on the replica, seconds", ())

    def record(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.name in self._gauges:
                self._gauges[sample.name].set(sample.value, sample.tags)
            else:
                self._counters[sample.name].inc(sample.value, sample.tags)
