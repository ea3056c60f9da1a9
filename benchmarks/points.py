"""One measured point: a load (wrk or perf_analyzer, over HTTP or gRPC) run for the warm-up, held
until autoscaling has settled under it where asked, then run for the measured seconds; and the
one request that checks a contender answers before its points."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from benchmarks.loadgen import GRPC_CODEC, LoadResult, Request, run_perf_analyzer, run_wrk
from benchmarks.results import Run, log
from benchmarks.servers import GrpcTarget
from benchmarks.workloads import MODELS, sample
from devtools.processes import http_post

# A load: measured seconds → what it measured.
Load = Callable[[float], LoadResult]

# A Ray contender's replica count counts as settled once unchanged for this long under load:
# longer than configs/app.yaml's look_back_period_s (10) + upscale_delay_s (3), and enough for a
# new replica to start and warm up.
SETTLE_S = 15.0
SETTLE_CHUNK_S = 5.0
SETTLE_MAX_S = 120.0


@dataclasses.dataclass
class Autoscaling:
    """Holds a Ray contender's heavy points back until autoscaling has settled under their load,
    so that a point measures the deployment the load scaled to, not its scale-up on the same
    cores (a starting Triton replica takes the CPU the serving one needs; scale-up has tests of
    its own). Downscaling waits minutes (downscale_delay_s), so the count then holds."""

    replicas: Callable[[], dict[str, int]]
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    stable_since: float = 0.0
    workloads: set[str] = dataclasses.field(default_factory=set)  # those already settled

    def settle(self, load: Load, workload: str) -> None:
        """Load until the count has held SETTLE_S; a workload not seen before (a heavier model
        scales further) counts from now."""
        started = time.monotonic()
        if workload not in self.workloads:
            self.workloads.add(workload)
            self.counts, self.stable_since = self.replicas(), started
        while True:
            counts = self.replicas()
            if counts != self.counts:
                self.counts, self.stable_since = counts, time.monotonic()
            now = time.monotonic()
            if now - self.stable_since >= SETTLE_S or now - started >= SETTLE_MAX_S:
                break
            load(SETTLE_CHUNK_S)
        if time.monotonic() - started > 1:
            log(f"autoscaling settled after {time.monotonic() - started:.0f} s of load: {self.counts}")


def http_load(
    run: Run, url: str, request: Request, concurrency: int, kserve: tuple[str, str] | None = None
) -> Load:
    """`request` at `concurrency` with wrk; with `kserve=(model, codec)` under --loadgen
    perf_analyzer, perf_analyzer's requests of that model and codec instead."""
    if kserve is not None and run.args.loadgen == "perf_analyzer":
        target = url + request.path.split("/v2/models/", 1)[0]  # the route prefix, if any
        model, codec = kserve
        return lambda s: run_perf_analyzer(target, model, codec, concurrency, s)
    return lambda s: run_wrk(url, request, concurrency, s)


def grpc_load(target: GrpcTarget, model: str, concurrency: int) -> Load:
    """ModelInfer of `model` at `concurrency`: perf_analyzer -i grpc, whatever --loadgen says."""
    return lambda s: run_perf_analyzer(target.url, model, GRPC_CODEC, concurrency, s, headers=target.metadata)


def point(run: Run, load: Load, autoscaling: Autoscaling | None = None, workload: str = "-") -> LoadResult:
    """`load` for the warm-up (unmeasured), until `autoscaling` has settled under `workload` (a
    model), then for the measured seconds."""
    if run.args.warmup > 0:
        load(run.args.warmup)
    if autoscaling is not None:
        autoscaling.settle(load, workload)
    return load(run.args.seconds)


def check(url: str, request: Request, expect: bytes | None = None) -> str | None:
    """One request before the load: None if it answers 200, else why not."""
    try:
        status, body = http_post(url + request.path, request.body, request.headers, timeout=60)
    except OSError as exc:
        return f"{url}{request.path}: {exc}"
    if status != 200:
        return f"{url}{request.path}: HTTP {status}: {body[:300]!r}"
    if expect is not None and expect not in body:
        return f"{url}{request.path}: unexpected body {body[:300]!r}"
    return None


def check_grpc(target: GrpcTarget, model: str) -> str | None:
    """One ModelInfer before the load: None if it answers with output__0, else why not."""
    import tritonclient.grpc
    from tritonclient.utils import InferenceServerException

    data = sample(MODELS[model])
    tensor = tritonclient.grpc.InferInput("input__0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    client = target.client()
    try:
        result = client.infer(model, [tensor], headers=target.metadata, client_timeout=60)
    except InferenceServerException as exc:
        return f"{target.url} {model}: {exc}"
    finally:
        client.close()
    return None if result.as_numpy("output__0") is not None else f"{target.url} {model}: no output__0"
