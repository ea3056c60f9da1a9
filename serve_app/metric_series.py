"""What each replica exports: the metric names (Triton's `nv_*` and serve_app's own), their
samples, and histograms counted in the replica and exported as Prometheus histogram series."""

from __future__ import annotations

import bisect
from typing import NamedTuple

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
GPU_GAUGES = {
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
}

# On-demand placement: one series per replica (Serve's tags), named after GET /v2's fields.
MODEL_LOADS = "serve_app_model_loads"
MODEL_UNLOADS = "serve_app_model_unloads"  # reason: idle, evicted, failed (Counters.unloads)
CACHE_REQUESTS = "serve_app_cache_requests"  # result: hit, miss
LOAD_DURATION = "serve_app_model_load_duration_seconds"  # histogram series, as LATENCY
# Model load times (s): a tiny model on CPU to a large one onto a GPU.
LOAD_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300]
LOADED_MODELS, LOADED_BYTES = "serve_app_loaded_models", "serve_app_loaded_bytes"
MAX_MODELS, MEMORY_BUDGET = "serve_app_max_models_per_replica", "serve_app_memory_budget_bytes"
PLACEMENT_GAUGES = {
    LOADED_MODELS: "Models loaded on the replica",
    LOADED_BYTES: "Bytes of the models loaded on the replica (measured, else estimated)",
    MAX_MODELS: "The replica's budget of models (args.model_placement)",
    MEMORY_BUDGET: "The replica's memory budget for models, bytes (args.model_placement)",
}


class Sample(NamedTuple):
    """One update of one metric: a counter increment, a gauge value or a histogram observation."""

    name: str
    value: float
    tags: dict[str, str]


class Histogram:
    """Observations since the replica started, counted in `bounds`, exported as `name`'s series."""

    __slots__ = ("bounds", "counts", "name", "total")  # updated per request: the faster attributes

    def __init__(self, name: str, bounds: list[float]) -> None:
        self.name = name
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.total += value

    def samples(self, tags: dict[str, str]) -> list[Sample]:
        samples, cumulative = [], 0
        labels = [*(str(float(bound)) for bound in self.bounds), "+Inf"]  # Prometheus's `le`
        for bound, count in zip(labels, self.counts, strict=True):
            cumulative += count
            samples.append(Sample(f"{self.name}_bucket", cumulative, {**tags, "le": bound}))
        samples.append(Sample(f"{self.name}_sum", self.total, tags))
        samples.append(Sample(f"{self.name}_count", cumulative, tags))
        return samples
