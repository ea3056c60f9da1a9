"""Which contender runs where, and which points each gets: the generator's ceiling, the
in-process limit, the Ray contenders (`serve run` per group and mode), serve_app without Ray and
standalone Triton, each model over HTTP per codec and, for those serving Triton's gRPC API
(serve_app, serve_app triton, standalone Triton), over gRPC with `perf_analyzer -i grpc` (codec
`raw`), model by model so that both protocols meet the same replicas.

Each function takes the `Run` it records into (benchmarks.results) and starts what it measures
itself (benchmarks.servers, benchmarks.standalone, benchmarks.noray): a contender that fails is
recorded with `run.fail` and the benchmark goes on with the next. One point is
benchmarks.points'; a `serve run`'s ready time and stop outside the points, benchmarks.lifecycle.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import loadgen, standalone
from benchmarks.contenders import (
    CEILING,
    GRPC_CONTENDERS,
    KSERVE,
    LIMIT,
    NOOP,
    PLAIN,
    PROBES,
    RAY_CONTENDERS,
    STANDALONE,
    STANDALONE_MODE,
    TRITON,
    app_name,
    build_config,
    prefix,
    run_models,
    serve_app_deployment,
    triton_available,
)
from benchmarks.loadgen import GRPC_CODEC, run_wrk
from benchmarks.points import Autoscaling, check, check_grpc, grpc_load, http_load, point
from benchmarks.results import Run, loadavg, log
from benchmarks.servers import ROOT, GrpcTarget, Mode, ServeProcess, make_workdir
from benchmarks.workloads import MODELS, kserve_binary, kserve_json, model_file, noop_request, plain_json
from devtools.processes import answers, free_port, interrupt_group, start_process


def grpc_target(
    run: Run, contender: str, mode: str, find: Callable[[], GrpcTarget | None]
) -> GrpcTarget | None:
    """Where `contender`'s gRPC rows connect; None when it has none (or finding it failed: recorded)."""
    if "grpc" not in run.args.protocols or contender not in GRPC_CONTENDERS:
        return None
    try:
        return find()
    except Exception as exc:  # noqa: BLE001 - its HTTP rows are still measured
        run.fail(contender, mode, f"gRPC: {type(exc).__name__}: {str(exc)[-600:]}")
        return None


def measure_generator_ceiling(run: Run) -> None:
    """wrk against a trivial C server, per concurrency (gRPC rows have no such ceiling: see the note)."""
    if "grpc" in run.args.protocols:
        run.note(
            "gRPC rows have no generator ceiling: no trivial C gRPC server is at hand (HAProxy's "
            "`http-request return` cannot send the grpc-status trailer a unary call ends with) and a "
            "Python one would be slower than what it should bound; standalone Triton's tiny-model "
            "gRPC rows (C++ server, Linear 16->4) bound perf_analyzer -i grpc's ceiling from below"
        )
    if loadgen.haproxy_binary() is None:
        run.note("no haproxy binary: generator ceiling not measured")
        return
    request = kserve_binary(MODELS["tiny"])
    for concurrency in run.args.concurrency:
        result = loadgen.ceiling(request, concurrency, max(1.0, min(run.args.seconds, 5)))
        run.ceiling.append(result.as_dict())
        run.add(CEILING, "trivial", "-", "-", result)


def measure_inprocess(run: Run, repository: Path, when: str) -> None:
    """Full batches in one process. Run at the start and at the end: the ratio uses the larger."""
    seconds = max(0.5, min(run.args.seconds, 8))
    for name in run.args.models:
        model = MODELS[name]
        entry: dict[str, Any] = {"when": when, "load1": loadavg()[0]}
        for batch in (64, 1):
            completed = subprocess.run(
                [
                    sys.executable, "-m", "benchmarks.inprocess", str(model_file(repository, name)),
                    "--width", str(model.width), "--batch", str(batch), "--seconds", str(seconds),
                    "--threads", "2",
                ],
                capture_output=True, text=True, cwd=ROOT, check=True,
            )  # fmt: skip
            entry[f"batch{batch}"] = json.loads(completed.stdout.strip().splitlines()[-1])
        samples = run.limit_samples.setdefault(name, [])
        samples.append(entry)
        best = max(samples, key=lambda e: e["batch64"]["samples_per_s"])
        run.limits[name] = {"batch64": best["batch64"], "batch1": best["batch1"], "samples": samples}
        b64, b1 = entry["batch64"], entry["batch1"]
        log(
            f"{LIMIT:<26} {name:<8} ({when}) batch 64: {b64['samples_per_s']:9.1f} samples/s "
            f"(p50 {b64['p50_ms']:.1f} ms/batch); batch 1: {b1['samples_per_s']:.1f}/s"
        )


def ray_groups(run: Run) -> list[list[str]]:
    """Which Ray contenders share one `serve run`: one each, or all together with --shared."""
    wanted = [c for c in RAY_CONTENDERS if c in run.args.contenders]
    if TRITON in wanted:
        why = triton_available()
        if why:
            run.skip(TRITON, why)
            wanted.remove(TRITON)
    if run.args.shared:
        return [wanted] if wanted else []
    return [[c] for c in wanted]


def measure_ray_group(run: Run, group: list[str], mode: Mode, repository: Path) -> None:
    workdir = make_workdir("bsv")
    config = build_config(group, repository, free_port(), run.args.shared, run.args.deployment)
    extra_env = dict(item.split("=", 1) for item in run.args.env)
    lead = group[0]
    process = ServeProcess(config, mode, workdir, prefix(lead, group) + PROBES[lead], extra_env=extra_env)
    label = "+".join(group)
    log(f"starting {label} in mode {mode.name}")
    try:
        process.start()
    except Exception as exc:  # noqa: BLE001 - one contender failing must not end the benchmark
        for contender in group:
            run.fail(contender, mode.name, f"serve run did not start: {str(exc)[-800:]}")
        shutil.rmtree(workdir, ignore_errors=True)
        return
    entry: dict[str, Any] = {
        "mode": mode.name,
        "contenders": group,
        "ready_s": round(process.ready_after_s, 1),
    }
    try:
        entry["haproxy_processes"] = len(process.haproxy_pids())
        for contender in group:
            try:
                path = prefix(contender, group)
                url = process.url_for(path + PROBES[contender])
                grpc = grpc_target(
                    run,
                    contender,
                    mode.name,
                    functools.partial(process.grpc_target_for, app_name(contender, group)),
                )
                measure_contender(
                    run,
                    contender,
                    mode,
                    url,
                    repository,
                    replicas=process.replica_counts,
                    prefix=path,
                    grpc=grpc,
                )
            except Exception as exc:  # noqa: BLE001 - record and go on with the next contender
                run.fail(contender, mode.name, f"{type(exc).__name__}: {str(exc)[-600:]}")
    finally:
        entry["replicas_at_end"] = process.replica_counts()
        entry["autoscaling_events"] = process.autoscaling_events()
        report = process.stop()
        entry["stop"] = vars(report)
        run.request_path.append(entry)
        log(
            f"stopped {label}: {report.seconds:.1f} s, graceful={report.graceful}, "
            f"haproxy seen/left={report.haproxy_seen}/{report.haproxy_left}, "
            f"leftovers={len(report.leftovers)}; autoscaling: {entry['autoscaling_events'] or 'no events'}"
        )
        shutil.rmtree(workdir, ignore_errors=True)


def measure_contender(
    run: Run,
    contender: str,
    mode: Mode,
    url: str,
    repository: Path,
    replicas: Any = None,
    prefix: str = "",
    grpc: GrpcTarget | None = None,
) -> None:
    """All points of one contender (its HTTP app under route `prefix`, its gRPC API at `grpc`);
    `replicas()` is recorded with each, and the heaviest points wait for autoscaling to settle."""
    models = [m for m in run.args.models if m in run_models(repository)]
    autoscaling = Autoscaling(replicas) if replicas is not None and not run.args.no_settle else None

    def settled(concurrency: int) -> Autoscaling | None:
        return autoscaling if concurrency == max(run.args.concurrency) else None

    if contender == NOOP:
        request = noop_request("/noop/")
        if (why := check(url, request)) is not None:
            run.fail(contender, mode.name, why)
            return
        for concurrency in run.args.concurrency:
            result = point(run, http_load(run, url, request, concurrency), settled(concurrency))
            run.add(contender, mode.name, "-", "json", result, replicas)
        return
    if contender == PLAIN:
        for name in models:
            request = plain_json(MODELS[name], f"/plain/{name}")
            if (why := check(url, request, b'"output"')) is not None:
                run.fail(contender, mode.name, f"{name}: {why}")
                continue
            for concurrency in run.args.concurrency:
                result = point(run, http_load(run, url, request, concurrency), settled(concurrency), name)
                run.add(contender, mode.name, name, "json", result, replicas)
        return
    # KServe v2 servers (serve_app, any runtime; standalone Triton): small models first.
    assert contender in KSERVE, contender
    codecs = run.args.codecs if "http" in run.args.protocols else []
    for name in sorted(models, key=lambda m: MODELS[m].width):
        for codec in codecs:
            request = (kserve_binary if codec == "binary" else kserve_json)(MODELS[name])
            request = dataclasses.replace(request, path=prefix + request.path)
            if (why := check(url, request, b'"output__0"')) is not None:
                run.fail(contender, mode.name, f"{name} {codec}: {why}")
                continue
            for concurrency in run.args.concurrency:
                load = http_load(run, url, request, concurrency, kserve=(name, codec))
                result = point(run, load, settled(concurrency), name)
                run.add(contender, mode.name, name, codec, result, replicas)
        if grpc is not None:
            if (why := check_grpc(grpc, name)) is not None:
                run.fail(contender, mode.name, f"{name} gRPC: {why}")
                continue
            for concurrency in run.args.concurrency:
                result = point(run, grpc_load(grpc, name, concurrency), settled(concurrency), name)
                run.add(contender, mode.name, name, GRPC_CODEC, result, replicas)
    if not run.args.no_transport and (repository / "blob4m").is_dir():
        measure_transport(run, contender, mode.name, url, prefix)


def measure_transport(run: Run, contender: str, mode: str, url: str, prefix: str = "") -> None:
    model = MODELS["blob4m"]
    for codec, levels in (("binary", (1, 4)), ("json", (1,))):
        request = (kserve_binary if codec == "binary" else kserve_json)(model)
        request = dataclasses.replace(request, path=prefix + request.path)
        if (why := check(url, request, b'"output__0"')) is not None:
            run.fail(contender, mode, f"transport {codec}: {why}")
            continue
        for concurrency in levels:
            # wrk always: the wire GB/s needs the bytes it counts.
            result = point(run, functools.partial(run_wrk, url, request, concurrency, timeout_s=60))
            # GB/s of tensor data one way (4 MiB in, the same 4 MiB back out), and of all bytes on the
            # wire both ways (bodies and headers as wrk counts them).
            gbps = result.throughput * model.sample_bytes / 1e9
            response_bytes = result.response_bytes / max(1, result.requests)
            wire = result.throughput * (len(request.body) + response_bytes) / 1e9
            run.transport.append(
                {
                    "contender": contender,
                    "mode": mode,
                    "codec": codec,
                    "tensor_bytes": model.sample_bytes,
                    "request_bytes": len(request.body),
                    "gb_per_s": gbps,
                    "wire_gb_per_s": wire,
                    **result.as_dict(),
                }
            )
            log(
                f"{contender:<26} {mode:<16} 4 MiB   {codec:<6} c={concurrency:<3} "
                f"{result.throughput:7.1f} req/s = {gbps:.3f} GB/s of tensor each way, "
                f"{wire:.3f} GB/s on the wire both ways (body {len(request.body) / 2**20:.1f} MiB), "
                f"p50 {result.p50_ms:.1f} ms" + (f" errors {result.error_detail}" if result.errors else "")
            )


def measure_noray(run: Run, contender: str, repository: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "benchmarks.noray", str(repository), str(port)]
    command += ["--threads", str(run.args.noray_threads)]
    workdir = make_workdir("bnr")
    try:
        ready = functools.partial(answers, url + "/v2/health/ready")
        process = start_process(command, workdir / "noray.log", ready, contender, 120, cwd=ROOT)
    except (RuntimeError, TimeoutError) as exc:
        run.fail(contender, "uvicorn", f"did not start: {str(exc)[-500:]}")
        shutil.rmtree(workdir, ignore_errors=True)
        return
    try:
        measure_contender(run, contender, Mode("uvicorn", {}, "proxy", "no Ray"), url, repository)
    finally:
        interrupt_group(process, 30)
        shutil.rmtree(workdir, ignore_errors=True)


def measure_standalone(run: Run, repository: Path) -> None:
    """Standalone Triton (the `tritonserver` binary) over the same repository, with serve_app's CPUs."""
    why = standalone.unavailable()
    if why:
        run.skip(STANDALONE, why)
        return
    share = standalone.allotment(serve_app_deployment(run.args.deployment))
    run.allotments[STANDALONE] = share.describe()
    workdir = make_workdir("bts")
    process = standalone.TritonProcess(repository, share, workdir, grpc="grpc" in run.args.protocols)
    log(f"starting {STANDALONE}: {share.describe()}")
    try:
        process.start()
    except Exception as exc:  # noqa: BLE001 - one contender failing must not end the benchmark
        run.fail(STANDALONE, STANDALONE_MODE, f"did not start: {type(exc).__name__}: {str(exc)[-800:]}")
        shutil.rmtree(workdir, ignore_errors=True)
        return
    entry: dict[str, Any] = {
        "mode": STANDALONE_MODE,
        "contenders": [STANDALONE],
        "ready_s": round(process.ready_after_s, 2),
        "allotment": share.describe(),
    }
    mode = Mode(STANDALONE_MODE, {}, "proxy", "the tritonserver binary's own HTTP/gRPC servers, no Ray")
    try:
        grpc = grpc_target(run, STANDALONE, STANDALONE_MODE, lambda: process.grpc)
        measure_contender(run, STANDALONE, mode, process.url, repository, grpc=grpc)
    except Exception as exc:  # noqa: BLE001
        run.fail(STANDALONE, STANDALONE_MODE, f"{type(exc).__name__}: {str(exc)[-600:]}")
    finally:
        entry["stop"] = vars(process.stop())
        run.request_path.append(entry)
        log(f"stopped {STANDALONE}: ready after {entry['ready_s']} s, stop {entry['stop']['seconds']:.1f} s")
        shutil.rmtree(workdir, ignore_errors=True)
