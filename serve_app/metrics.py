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
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from ray.serve import metrics as serve_metrics

from serve_app.runtimes.base import Runtime

logger = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]  # (model, version)

MODEL_TAGS = ("model", "version")
# Triton's failure reasons; a runtime's statistics count failures without one (see _split_failures).
REJECTED, CANCELED, BACKEND = "REJECTED", "CANCELED", "BACKEND"
# Request latency buckets (ms): sub-millisecond tiny models to multi-second batches.
LATENCY_BUCKETS_MS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]

# Counters fed from the runtime's statistics: name → description (Triton's wording).
STATISTICS_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (a batch of n counts n)",
    "nv_inference_exec_count": "Number of model executions performed (a batch counts once)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_input_duration_us": "Cumulative compute input duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
    "nv_inference_compute_output_duration_us": "Cumulative inference compute output duration in microseconds",
}
FAILURE = "nv_inference_request_failure"
PENDING = "nv_inference_pending_request_count"
LATENCY = "nv_inference_request_histogram_ms"  # exported as LATENCY_bucket, _sum and _count
_LE = [*(str(float(bound)) for bound in LATENCY_BUCKETS_MS), "+Inf"]  # Prometheus's `le` labels
GPU_GAUGES = {
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
}


class Sample(NamedTuple):
    """One update of one metric: a counter increment, a gauge value or a histogram observation."""

    name: str
    value: float
    tags: dict[str, str]


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


class _Histogram:
    """Latencies of one model version since the replica started, in LATENCY_BUCKETS_MS."""

    __slots__ = ("counts", "sum_ms")  # updated per request: slots are the faster attributes

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # the last one: above every bound
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1  # le: ms <= bound
        self.sum_ms += ms

    def samples(self, tags: dict[str, str]) -> list[Sample]:
        samples, cumulative = [], 0
        for bound, count in zip(_LE, self.counts, strict=True):
            cumulative += count
            samples.append(Sample(f"{LATENCY}_bucket", cumulative, {**tags, "le": bound}))
        samples.append(Sample(f"{LATENCY}_sum", self.sum_ms, tags))
        samples.append(Sample(f"{LATENCY}_count", cumulative, tags))
        return samples


@dataclass(slots=True)
class _Outcomes:
    """What the dataplane saw of one model version: counts since the last collection, latencies
    since the replica started."""

    in_flight: int = 0
    rejected: int = 0
    canceled: int = 0
    latency: _Histogram = field(default_factory=_Histogram)


def _tags(key: Key) -> dict[str, str]:
    return {"model": key[0], "version": key[1]}


class ReplicaMetrics:
    """The replica's metrics: the dataplane's observer, and the task that exports every interval."""

    def __init__(self, runtime: Runtime, interval_s: float, gpu_ids: tuple[str, ...] = ()) -> None:
        self._runtime = runtime
        self._interval_s = interval_s
        self._outcomes: dict[Key, _Outcomes] = {}
        self._totals: dict[Key, _Totals] = {}
        # Cancellations seen by the dataplane that the runtime's statistics had not counted yet.
        self._unmatched_cancels: dict[Key, int] = {}
        self._gpus = GpuReader.open(gpu_ids) if gpu_ids else None
        self._instruments = _Instruments(gpu=self._gpus is not None)
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
        samples = list(self._from_statistics())
        for key, record in self._outcomes.items():
            tags = _tags(key)
            samples.append(Sample(PENDING, record.in_flight, tags))
            if record.rejected:
                samples.append(Sample(FAILURE, record.rejected, {**tags, "reason": REJECTED}))
            samples += record.latency.samples(tags)
            record.rejected = record.canceled = 0
        if self._gpus is not None:
            samples += self._gpus.read()
        return samples

    def _from_statistics(self) -> Iterator[Sample]:
        stats = self._runtime.statistics(None, None)["model_stats"]
        current = {(s["name"], str(s["version"])): _Totals.from_statistics(s) for s in stats}
        for key, totals in current.items():
            delta = totals.since(self._totals.get(key))
            tags = _tags(key)
            for name, value in zip(STATISTICS_COUNTERS, delta, strict=False):
                if value > 0:
                    yield Sample(name, value, tags)
            for reason, count in self._split_failures(key, delta.failures):
                yield Sample(FAILURE, count, {**tags, "reason": reason})
        self._totals = current  # an unloaded version drops out: a reload counts from zero

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

    def __init__(self, gpu: bool) -> None:
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
        for suffix, what, tag_keys in [
            ("bucket", "Histogram buckets (cumulative counts) of the", (*MODEL_TAGS, "le")),
            ("sum", "Sum of the", MODEL_TAGS),
            ("count", "Count of the", MODEL_TAGS),
        ]:
            name = f"{LATENCY}_{suffix}"
            self._gauges[name] = serve_metrics.Gauge(name, description=f"{what} {latency}", tag_keys=tag_keys)

    def record(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.name in self._gauges:
                self._gauges[sample.name].set(sample.value, sample.tags)
            else:
                self._counters[sample.name].inc(sample.value, sample.tags)


class GpuReader:
    """Utilisation and memory of the replica's GPUs from NVML, as Triton reports them."""

    def __init__(self, nvml: Any, handles: dict[str, Any]) -> None:
        self._nvml = nvml
        self._handles = handles  # GPU UUID → NVML handle

    @classmethod
    def open(cls, gpu_ids: tuple[str, ...]) -> GpuReader | None:
        """NVML handles for Ray's GPU ids (indices or UUIDs); None, logged, where NVML is missing."""
        try:
            nvml = _import_nvml()
            nvml.nvmlInit()
            handles = {}
            for gpu in gpu_ids:
                handle = (
                    nvml.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith(("GPU-", "MIG-"))
                    else nvml.nvmlDeviceGetHandleByIndex(int(gpu))
                )  # fmt: skip
                uuid = nvml.nvmlDeviceGetUUID(handle)
                handles[uuid.decode() if isinstance(uuid, bytes) else uuid] = handle
        except Exception as exc:  # noqa: BLE001 - no GPU metrics, everything else still works
            logger.warning("no GPU metrics for GPUs %s: NVML unavailable (%s)", ",".join(gpu_ids), exc)
            return None
        return cls(nvml, handles)

    def memory_used(self) -> int:
        """Bytes in use on the replica's GPUs (what a model's load adds, on-demand placement)."""
        return sum(self._nvml.nvmlDeviceGetMemoryInfo(handle).used for handle in self._handles.values())

    def read(self) -> list[Sample]:
        samples = []
        for uuid, handle in self._handles.items():
            tags = {"gpu_uuid": uuid}
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            samples += [
                Sample("nv_gpu_utilization", utilization, tags),
                Sample("nv_gpu_memory_used_bytes", memory.used, tags),
                Sample("nv_gpu_memory_total_bytes", memory.total, tags),
            ]
        return samples


def _import_nvml() -> Any:
    """`pynvml` (nvidia-ml-py) where installed, else the copy Ray ships for its own GPU metrics."""
    try:
        import pynvml
    except ImportError:
        from ray._private.thirdparty import pynvml
    return pynvml
