"""serve_app benchmark: one command, every contender, one table.

    python -m benchmarks.run              # full: 3 request-path modes, c = 1/8/64 (~50 min on 2 cores)
    python -m benchmarks.run --quick      # stock + haproxy modes, c = 1/64, 5 s points (~21 min)
    python -m benchmarks.run --smoke      # 1 s points, tiny model, one shared cluster (~60-80 s; CI)
    python -m benchmarks.run --help       # pick modes, models, contenders, concurrency, seconds ...

Run from the repository root with the venv active and `wrk` on PATH (apt-get install wrk).
It builds a temporary Triton model repository (benchmarks.workloads: mlp4096, the
compute-bound 4x(Linear 4096→4096+ReLU) FP32 with max_batch_size 64 and
dynamic_batching {}; mlp1024, lighter; tiny, Linear(16→4); blob4m, a 4 MiB identity),
then measures, on this machine and in this one run:

* generator ceiling: wrk against a trivial C server (haproxy answering by itself);
* in-process limit: the same TorchScript file called directly in one process with full
  batches of 64, torch threads = 2, no HTTP (at the start and at the end of the run; ratios
  use the larger);
* serve_app (torch runtime; and runtime triton when `tritonserver` and
  serve_app.runtimes.triton import) via `serve run` of configs/app.yaml as shipped (only
  the port, repository and runtime swapped), binary tensors and JSON;
* plain Ray Serve (benchmarks.baselines: the Ray docs tutorial's per-request deployment,
  JSON in/out) and a no-op Ray Serve deployment;
* serve_app's ASGI app under plain uvicorn without Ray, 1 torch thread like one replica;
* standalone Triton: the `tritonserver` binary of the same nvidia-pytriton wheel, same
  backends (the native PyTorch backend) and repository, on serve_app's CPU allotment
  (benchmarks.standalone), through its own HTTP (and gRPC) server;
* each Ray contender in each request-path mode (benchmarks.servers.MODES: stock proxy,
  RAY_SERVE_THROUGHPUT_OPTIMIZED direct ingress, HAProxy), each in its own fresh `serve run`
  (own Ray node), with the replica count per point, the controller's autoscaling decisions,
  and what its SIGINT stop left running;
* a 4 MiB FP32 round trip (binary vs JSON), `serve run configs/app.yaml` time to ready, and
  what a SIGKILLed `serve run` leaves behind in HAProxy mode.

Throughput counts requests/s; each request carries one sample except in the transport
test. `xlimit` = throughput / in-process samples/s at batch 64 (same model, same run);
`xplain` = throughput / plain Ray Serve's in the same mode at the same concurrency;
`xtriton` = throughput / standalone Triton's (same model, codec, concurrency, protocol). The machine's
load average is recorded before, after and with every point. `--loadgen perf_analyzer` drives
the KServe rows with Triton's perf_analyzer instead of wrk; `--protocols http,grpc` (every preset)
adds gRPC rows for the contenders serving Triton's gRPC API (serve_app, serve_app triton,
standalone Triton), driven by `perf_analyzer -i grpc` on the same models and concurrency. Results:
benchmarks/results/results.json, results.md (the printed tables) and throughput.png.

Modules: settings (the command line), contenders (names, Serve configs), servers / standalone /
noray / baselines (the contenders' processes), loadgen (wrk, perf_analyzer), points (one
measured point), measure (which contender gets which points, where), lifecycle (ready times,
stops, the kill test), results (what was measured), report (ratios, tables, plot); this one wires
them. Processes, ports and HTTP probes: devtools.processes, shared with the tests.
"""

from __future__ import annotations

import os
import shutil
import sys

from benchmarks import lifecycle, loadgen, measure, report
from benchmarks.contenders import NORAY, STANDALONE
from benchmarks.results import Run, log
from benchmarks.servers import make_workdir
from benchmarks.settings import parse_args
from benchmarks.workloads import build_repository


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, __doc__)
    if not loadgen.available():
        sys.exit("wrk is not installed: apt-get install wrk")
    run = Run(args)
    if args.loadgen == "perf_analyzer" or "grpc" in args.protocols:
        # Fetched into the cache (and tried) before anything starts.
        why = loadgen.perf_analyzer_problem()
        if why and args.loadgen == "perf_analyzer":
            sys.exit(why)
        if why:
            run.skip("gRPC rows (perf_analyzer -i grpc)", why)
            args.protocols.remove("grpc")
    log(
        f"load average before: {run.load_before} on {os.cpu_count()} cores; modes "
        f"{[m.name for m in args.modes]}; models {args.models}; concurrency {args.concurrency}; "
        f"load generator {args.loadgen}; protocols {args.protocols}"
    )
    scratch = make_workdir("bench")
    try:
        names = list(dict.fromkeys([*args.models, *([] if args.no_transport else ["blob4m"])]))
        repository = build_repository(scratch / "repository", names)
        measure.measure_generator_ceiling(run)
        measure.measure_inprocess(run, repository, "start")
        if STANDALONE in args.contenders:
            measure.measure_standalone(run, repository)
        if NORAY in args.contenders:
            measure.measure_noray(run, NORAY, repository)
        for mode in args.modes:
            for group in measure.ray_groups(run):
                measure.measure_ray_group(run, group, mode, repository)
        if not args.no_startup:
            lifecycle.measure_startup(
                run, [m for m in args.modes if m.name in ("stock", "haproxy")] or args.modes[:1]
            )
        if args.kill_test:
            lifecycle.kill_test(run)
        measure.measure_inprocess(run, repository, "end")
    finally:
        text = report.write(run.data(), args.out, args.tag, with_plot=not args.smoke)
        print("\n" + text, flush=True)
        suffix = f"-{args.tag}" if args.tag else ""
        log(
            f"wrote {args.out / f'results{suffix}.json'}, results{suffix}.md"
            + ("" if args.smoke else ", png")
        )
        shutil.rmtree(scratch, ignore_errors=True)
    if run.failures:
        sys.exit(f"{len(run.failures)} contender point(s) failed: see FAILED in the report")


if __name__ == "__main__":
    main()
