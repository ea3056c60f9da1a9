"""Per-model inference statistics in Triton's `/v2/models/{m}/stats` format."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from serve_app.runtimes.torch.torchscript import Timings


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


_PHASES = ("compute_input", "compute_infer", "compute_output")


class ModelStatistics:
    """Counters for one model version; updated from the replica's event loop only."""

    def __init__(self) -> None:
        self.last_inference_ms = 0
        self.inference_count = 0  # samples
        self.execution_count = 0  # model executions (batches)
        self.request = {k: Duration() for k in ("success", "fail", "queue", *_PHASES)}
        self.batches: dict[int, dict[str, Duration]] = defaultdict(
            lambda: {phase: Duration() for phase in _PHASES}
        )

    def record_execution(self, batch_size: int, requests: int, timings: Timings) -> None:
        """One model execution that served `requests` requests with `batch_size` samples."""
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        by_phase = self.batches[batch_size]
        for phase in _PHASES:
            ns = getattr(timings, phase)
            by_phase[phase].add(ns)
            self.request[phase].add(ns * requests, requests)

    def record_request(self, ok: bool, total_ns: int, queue_ns: int) -> None:
        """As in Triton, a failed request counts only under `fail`; queue time is for successes."""
        if not ok:
            self.request["fail"].add(total_ns)
            return
        self.request["success"].add(total_ns)
        self.request["queue"].add(queue_ns)

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                **{k: d.as_dict() for k, d in self.request.items()},
                "cache_hit": Duration().as_dict(),
                "cache_miss": Duration().as_dict(),
            },
            "batch_stats": [
                {"batch_size": size, **{p: d.as_dict() for p, d in phases.items()}}
                for size, phases in sorted(self.batches.items())
            ],
        }
