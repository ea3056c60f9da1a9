"""ModelStatistics renders Triton's /v2/models/{m}/stats entries."""

from __future__ import annotations

import time

from serve_app.runtimes.torch.statistics import ModelStatistics
from serve_app.runtimes.torch.torchscript import Timings

# Triton's model_stats entry (server/docs/protocol/extension_statistics.md).
ENTRY_KEYS = {
    "name",
    "version",
    "last_inference",
    "inference_count",
    "execution_count",
    "inference_stats",
    "batch_stats",
}
INFERENCE_STATS_KEYS = {
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
}
BATCH_STATS_KEYS = {"batch_size", "compute_input", "compute_infer", "compute_output"}


def test_fresh_statistics_are_zero_in_triton_format() -> None:
    entry = ModelStatistics().as_dict("linear", "1")
    assert set(entry) == ENTRY_KEYS
    assert (entry["name"], entry["version"]) == ("linear", "1")
    assert entry["last_inference"] == entry["inference_count"] == entry["execution_count"] == 0
    assert entry["inference_stats"] == {key: {"count": 0, "ns": 0} for key in INFERENCE_STATS_KEYS}
    assert entry["batch_stats"] == []


def test_executions_and_requests_are_counted_as_triton_counts_them() -> None:
    stats = ModelStatistics()
    before_ms = int(time.time() * 1000)
    stats.record_execution(batch_size=3, requests=2, timings=Timings(100, 1000, 10))
    stats.record_execution(batch_size=1, requests=1, timings=Timings(50, 500, 5))
    stats.record_execution(batch_size=3, requests=3, timings=Timings(100, 1000, 10))
    for _ in range(6):
        stats.record_request(ok=True, total_ns=2000, queue_ns=300)
    stats.record_request(ok=False, total_ns=700, queue_ns=100)
    entry = stats.as_dict("m", "2")
    assert entry["last_inference"] >= before_ms
    assert entry["inference_count"] == 7  # samples
    assert entry["execution_count"] == 3  # batches
    inference = entry["inference_stats"]
    assert inference["success"] == {"count": 6, "ns": 12000}
    assert inference["fail"] == {"count": 1, "ns": 700}
    assert inference["queue"] == {"count": 6, "ns": 1800}  # successes only, as in Triton
    # Per request: each request of a batch is charged the batch's compute time.
    assert inference["compute_infer"] == {"count": 6, "ns": 2 * 1000 + 500 + 3 * 1000}
    assert inference["compute_input"] == {"count": 6, "ns": 2 * 100 + 50 + 3 * 100}
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    assert [b["batch_size"] for b in entry["batch_stats"]] == [1, 3]
    for batch in entry["batch_stats"]:
        assert set(batch) == BATCH_STATS_KEYS
    assert entry["batch_stats"][1]["compute_infer"] == {"count": 2, "ns": 2000}
    assert entry["batch_stats"][1]["compute_output"] == {"count": 2, "ns": 20}
