"""The in-process limit: a TorchScript model called directly with full batches, no HTTP.

`python -m benchmarks.inprocess MODEL_PT --width 4096 --batch 64 --seconds 5 --threads 2`
prints one JSON line: samples/s and per-batch latency percentiles. Run as its own
process so its torch thread setting cannot leak into the benchmark driver.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def measure(model_path: str, width: int, batch: int, seconds: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    module = torch.jit.load(model_path).eval()
    inputs = torch.rand(batch, width)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: allocator, JIT profiling runs
            module(inputs)
        latencies = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(latencies) < 5:
            t0 = time.perf_counter()
            module(inputs)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    lat_ms = np.array(latencies) * 1e3
    return {
        "batch": batch,
        "threads": threads,
        "batches": len(latencies),
        "samples_per_s": len(latencies) * batch / elapsed,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="path to model.pt (TorchScript)")
    parser.add_argument("--width", type=int, required=True, help="input features")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.width, args.batch, args.seconds, args.threads)))


if __name__ == "__main__":
    main()
