"""Runtime statistics and dataplane outcomes → metric updates (no Ray cluster: updates are inspected)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import pytest

from serve_app import metric_series as series
from serve_app.config import parse_args
from serve_app.dataplane import DataPlane
from serve_app.errors import InvalidInputError
from serve_app.infer_types import InferRequest, InputTensor
from serve_app.metrics import ReplicaMetrics, _Instruments
from serve_app.model_state.replica import DeploymentModels
from serve_app.residency.cache import ModelCache
from serve_app.residency.types import Budget, Counters
from serve_app.runtimes.torch.runtime import TorchRuntime

pytestmark = pytest.mark.anyio

Totals = dict[tuple[str, ...], float]


def totals(samples: list[series.Sample], name: str) -> Totals:
    """Sum of the updates of `name` by (model, version[, reason])."""
    found: Totals = defaultdict(float)
    for sample in samples:
        if sample.name == name:
            found[tuple(sample.tags.values())] += sample.value
    return dict(found)


def linear_request(width: int = 16, batch: int = 2) -> InferRequest:
    data = np.ones((batch, width), np.float32)
    return InferRequest("linear", None, [InputTensor("input__0", "FP32", data.shape, data)])


async def test_good_and_bad_requests_become_triton_metrics(runtime: TorchRuntime) -> None:
    metrics = ReplicaMetrics(runtime, interval_s=1.0)
    dataplane = DataPlane(
        runtime, DeploymentModels.in_process(runtime), model_control=False, placement={}, observer=metrics
    )
    for _ in range(3):
        await dataplane.infer(linear_request())
    for _ in range(2):
        with pytest.raises(InvalidInputError):
            await dataplane.infer(linear_request(width=15))
    samples = metrics.collect()
    key = ("linear", "1")
    assert totals(samples, "nv_inference_request_success") == {key: 3}
    assert totals(samples, "nv_inference_count") == {key: 6}
    assert totals(samples, "nv_inference_request_failure") == {(*key, "REJECTED"): 2}
    assert totals(samples, "nv_inference_exec_count")[key] >= 1
    stats = runtime.statistics("linear", "1")["model_stats"][0]["inference_stats"]
    for metric, phase in [("request", "success"), ("queue", "queue"), ("compute_infer", "compute_infer")]:
        exported = totals(samples, f"nv_inference_{metric}_duration_us")[key]
        assert exported == pytest.approx(stats[phase]["ns"] / 1000) and exported > 0
    assert totals(samples, f"{series.LATENCY}_count") == {key: 3}
    buckets = [s for s in samples if s.name == f"{series.LATENCY}_bucket"]
    assert buckets[-1].tags["le"] == "+Inf" and buckets[-1].value == 3
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)  # cumulative
    assert 0 < totals(samples, f"{series.LATENCY}_sum")[key] < 30_000 * 3
    assert totals(samples, series.PENDING) == {key: 0}
    assert not [s for s in samples if s.name.startswith("serve_app_")]  # every model resident: none

    again = metrics.collect()  # nothing new: no increments; the gauges again, the histogram unchanged
    assert {s.name for s in again} == {
        series.PENDING,
        f"{series.LATENCY}_bucket",
        f"{series.LATENCY}_sum",
        f"{series.LATENCY}_count",
    }
    assert totals(again, f"{series.LATENCY}_count") == {key: 3}


def test_latency_buckets_count_values_up_to_their_bound() -> None:
    histogram = series.Histogram(series.LATENCY, series.LATENCY_BUCKETS_MS)
    for ms in (0.1, 0.2, 7, 10**6):
        histogram.observe(ms)
    counts = {s.tags["le"]: s.value for s in histogram.samples({}) if s.name.endswith("_bucket")}
    expected = {"0.1": 1, "0.25": 2, "5.0": 2, "10.0": 3, "30000.0": 3, "+Inf": 4}
    assert {le: counts[le] for le in expected} == expected


def model_stats(name: str, version: str, success: int, fail: int = 0, ns: int = 1000) -> dict[str, Any]:
    """One entry of Triton's statistics format."""
    duration = {"count": success, "ns": ns}
    return {
        "name": name,
        "version": version,
        "inference_count": success,
        "execution_count": success,
        "inference_stats": {
            "success": duration,
            "fail": {"count": fail, "ns": 0},
            **{p: duration for p in ("queue", "compute_input", "compute_infer", "compute_output")},
        },
    }


class FakeRuntime:
    """Serves whatever statistics the test sets."""

    def __init__(self) -> None:
        self.stats: list[dict[str, Any]] = []

    def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        return {"model_stats": [s for s in self.stats if model in (None, s["name"])]}


async def test_counters_follow_the_increase_and_a_reload_counts_from_zero() -> None:
    runtime = FakeRuntime()
    metrics = ReplicaMetrics(runtime, interval_s=1.0)  # type: ignore[arg-type]
    runtime.stats = [model_stats("a", "1", success=5, ns=4000)]
    assert totals(metrics.collect(), "nv_inference_request_success") == {("a", "1"): 5}
    runtime.stats = [model_stats("a", "1", success=7, ns=5000)]
    samples = metrics.collect()
    assert totals(samples, "nv_inference_request_success") == {("a", "1"): 2}
    assert totals(samples, "nv_inference_request_duration_us") == {("a", "1"): 1.0}
    runtime.stats = [model_stats("a", "1", success=1, ns=500)]  # reloaded: its statistics restarted
    assert totals(metrics.collect(), "nv_inference_request_success") == {("a", "1"): 1}
    runtime.stats = []  # unloaded
    assert metrics.collect() == []
    runtime.stats = [model_stats("a", "1", success=2)]  # loaded again
    assert totals(metrics.collect(), "nv_inference_request_success") == {("a", "1"): 2}


async def test_runtime_failures_are_canceled_as_far_as_the_dataplane_saw_cancellations() -> None:
    runtime = FakeRuntime()
    metrics = ReplicaMetrics(runtime, interval_s=1.0)  # type: ignore[arg-type]
    runtime.stats = [model_stats("a", "1", success=0)]
    metrics.collect()

    hanging = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(metrics.observe("a", "1", hanging))
    await asyncio.sleep(0)
    assert totals(metrics.collect(), series.PENDING) == {("a", "1"): 1}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The runtime has not counted the cancellation yet: it waits, the backend failure does not.
    runtime.stats = [model_stats("a", "1", success=0, fail=1)]
    assert totals(metrics.collect(), "nv_inference_request_failure") == {("a", "1", "CANCELED"): 1}
    runtime.stats = [model_stats("a", "1", success=0, fail=2)]
    assert totals(metrics.collect(), "nv_inference_request_failure") == {("a", "1", "BACKEND"): 1}


async def test_the_task_exports_every_interval_and_stops(runtime: TorchRuntime) -> None:
    metrics = ReplicaMetrics(runtime, interval_s=0.01)
    exported: list[list[series.Sample]] = []
    metrics._instruments.record = exported.append  # type: ignore[method-assign]
    metrics.start()
    with anyio.fail_after(10):
        while len(exported) < 2:
            await asyncio.sleep(0.01)
    await metrics.stop()
    count = len(exported)
    await asyncio.sleep(0.05)
    assert len(exported) == count  # stopped (after a last export)


def test_metrics_args() -> None:
    args = parse_args({"model_repository": ".", "metrics": {"interval_s": 0.5}})
    assert args.metrics.enabled and args.metrics.interval_s == 0.5
    assert not parse_args({"model_repository": ".", "metrics": {"enabled": False}}).metrics.enabled


# --- on-demand placement ------------------------------------------------------------------------


class StandInCache:
    """What the metrics read of a model cache, as the test sets it."""

    def __init__(self, budget: Budget) -> None:
        self.counters = Counters()
        self.budget = budget
        self.sizes: dict[str, int] = {}  # resident model → bytes
        self.listeners: list[Callable[[str], None]] = []

    def resident(self) -> list[str]:
        return list(self.sizes)

    def resident_bytes(self) -> int:
        return sum(self.sizes.values())

    def before_unload(self, listener: Callable[[str], None]) -> None:
        self.listeners.append(listener)


def test_the_cache_becomes_increments_since_the_last_read_and_gauges_against_the_budget() -> None:
    cache = StandInCache(Budget(max_models=3, memory_bytes=1000))
    metrics = ReplicaMetrics(FakeRuntime(), interval_s=1.0, residency=cache)  # type: ignore[arg-type]
    cache.counters = Counters(hits=5, misses=2, loads=2, load_seconds=[0.02, 3.0])
    cache.counters.unloads["evicted"] = 1
    cache.sizes = {"a": 100, "b": 200}
    samples = metrics.collect()
    assert totals(samples, series.CACHE_REQUESTS) == {("hit",): 5, ("miss",): 2}
    assert totals(samples, series.MODEL_LOADS) == {(): 2}
    assert totals(samples, series.MODEL_UNLOADS) == {("evicted",): 1}
    gauges = {
        series.LOADED_MODELS: 2,
        series.LOADED_BYTES: 300,
        series.MAX_MODELS: 3,
        series.MEMORY_BUDGET: 1000,
    }
    assert {name: totals(samples, name) for name in gauges} == {name: {(): v} for name, v in gauges.items()}
    buckets = {s.tags["le"]: s.value for s in samples if s.name == f"{series.LOAD_DURATION}_bucket"}
    expected = {"0.01": 0, "0.025": 1, "2.5": 1, "5.0": 2, "+Inf": 2}  # 0.02 s and 3 s
    assert {le: buckets[le] for le in expected} == expected
    assert totals(samples, f"{series.LOAD_DURATION}_sum") == {(): pytest.approx(3.02)}
    assert cache.counters.load_seconds == []  # taken
    metrics._instruments.record(samples)  # Ray's metrics take every series with its tags

    cache.counters.hits += 1
    cache.counters.loads += 1
    cache.counters.load_seconds.append(0.5)
    cache.counters.unloads["idle"] += 1
    cache.counters.unloads["failed"] += 1
    del cache.sizes["b"]
    samples = metrics.collect()
    assert totals(samples, series.CACHE_REQUESTS) == {("hit",): 1}
    assert totals(samples, series.MODEL_LOADS) == {(): 1}
    assert totals(samples, series.MODEL_UNLOADS) == {("idle",): 1, ("failed",): 1}
    assert totals(samples, f"{series.LOAD_DURATION}_count") == {(): 3}
    assert totals(samples, series.LOADED_MODELS) == {(): 1} and totals(samples, series.LOADED_BYTES) == {
        (): 100
    }


def test_no_budget_no_budget_series_and_mode_all_no_placement_series() -> None:
    unbounded = ReplicaMetrics(FakeRuntime(), interval_s=1.0, residency=StandInCache(Budget()))  # type: ignore[arg-type]
    names = {s.name for s in unbounded.collect()}
    assert {series.LOADED_MODELS, series.LOADED_BYTES} <= names and not names & {
        series.MAX_MODELS,
        series.MEMORY_BUDGET,
    }
    with pytest.raises(KeyError):  # mode all registers none of the series
        _Instruments(gpu=False, placement=False).record([series.Sample(series.MODEL_LOADS, 1, {})])


def test_a_models_statistics_are_counted_when_the_cache_unloads_it() -> None:
    runtime = FakeRuntime()
    cache = StandInCache(Budget())
    metrics = ReplicaMetrics(runtime, interval_s=1.0, residency=cache)  # type: ignore[arg-type]

    def unload_a(reloaded_with: int | None) -> None:
        """The cache unloads "a" before the next read (and loads it again, served that often)."""
        for listener in cache.listeners:
            listener("a")
        again = [] if reloaded_with is None else [model_stats("a", "1", success=reloaded_with)]
        runtime.stats = [*again, model_stats("b", "1", success=1)]

    runtime.stats = [model_stats("a", "1", success=5), model_stats("b", "1", success=1)]
    metrics.collect()
    runtime.stats = [model_stats("a", "1", success=7), model_stats("b", "1", success=1)]
    unload_a(reloaded_with=None)
    assert totals(metrics.collect(), "nv_inference_request_success") == {("a", "1"): 2}
    runtime.stats = [model_stats("a", "1", success=4), model_stats("b", "1", success=1)]  # loaded again
    assert totals(metrics.collect(), "nv_inference_request_success") == {("a", "1"): 4}
    runtime.stats = [model_stats("a", "1", success=6), model_stats("b", "1", success=1)]
    unload_a(reloaded_with=8)  # 8 since its reload: more than it had, yet counted from zero
    assert totals(metrics.collect(), "nv_inference_request_success") == {("a", "1"): 2 + 8}


class LoadingRuntime(FakeRuntime):
    """Loads and unloads models; a loaded model's statistics count the requests `serve` gave it."""

    def __init__(self) -> None:
        super().__init__()
        self.served: dict[str, int] = {}

    async def in_repository(self, model: str) -> bool:
        return False

    async def load(self, model: str, parameters: dict[str, Any]) -> None:
        self.served[model] = 0
        self._update()

    async def unload(self, model: str) -> None:
        del self.served[model]
        self._update()

    def serve(self, model: str) -> None:
        self.served[model] += 1
        self._update()

    def _update(self) -> None:
        self.stats = [model_stats(model, "1", success=count) for model, count in self.served.items()]


async def test_a_model_cache_with_room_for_one_exports_every_request_and_what_it_did() -> None:
    runtime = LoadingRuntime()
    cache = ModelCache(runtime, Budget(max_models=1), lambda _: 1000, lambda: 0, lambda _: {})  # type: ignore[arg-type]
    metrics = ReplicaMetrics(runtime, interval_s=1.0, residency=cache)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        for model in "aab":
            async with cache.use(model):
                runtime.serve(model)
        while len(cache.resident()) > 1:  # a model in the spare room goes once idle
            await asyncio.sleep(0.01)
    samples = metrics.collect()
    # One of the two was evicted with its statistics, and its requests still count.
    assert totals(samples, "nv_inference_request_success") == {("a", "1"): 2, ("b", "1"): 1}
    assert totals(samples, series.CACHE_REQUESTS) == {("hit",): 1, ("miss",): 2}
    assert totals(samples, series.MODEL_LOADS) == {(): 2} and totals(
        samples, f"{series.LOAD_DURATION}_count"
    ) == {(): 2}
    assert totals(samples, series.MODEL_UNLOADS) == {("evicted",): 1}
    assert totals(samples, series.LOADED_MODELS) == {(): 1} and totals(samples, series.MAX_MODELS) == {(): 1}
