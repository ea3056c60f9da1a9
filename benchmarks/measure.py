"""Measuring: every contender's points, the in-process limit, the generator's ceiling, startup.

The KServe contenders are measured over HTTP (wrk or perf_analyzer, one row per codec) and, for
those serving Triton's gRPC API (serve_app, serve_app triton, standalone Triton), over gRPC
with `perf_analyzer -i grpc` (codec `raw`), model by model so that both protocols meet the
same replicas.

Each function takes the `Run` it records into (benchmarks.results) and starts what it measures
itself (benchmarks.servers, benchmarks.standalone, benchmarks.noray): a contender that fails is
recorded with `run.fail` and the benchmark goes on with the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
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
    noop_application,
    prefix,
    run_models,
    serve_app_config,
    serve_app_deployment,
    triton_available,
)
from benchmarks.loadgen import GRPC_CODEC, LoadResult, Request, run_perf_analyzer, run_wrk
from benchmarks.results import Run, loadavg, log
from benchmarks.servers import (
    MODES,
    ROOT,
    GrpcTarget,
    Mode,
    ServeProcess,
    alive,
    descendants,
    free_port,
    http_get,
    http_post,
    make_workdir,
    mentioning,
)
from benchmarks.workloads import (
    MODELS,
    build_repository,
    kserve_binary,
    kserve_json,
    model_file,
    noop_request,
    plain_json,
    sample,
)

# A Ray contender's replica count counts as settled once unchanged for this long under load:
# longer than configs/app.yaml's look_back_period_s (10) + upscale_delay_s (3), and enough for a
# new replica to start and warm up (~8 s here).
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

    def settle(self, load: Callable[[float], LoadResult], workload: str) -> None:
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


def point(
    run: Run,
    url: str,
    request: Request,
    concurrency: int,
    timeout_s: float = 30.0,
    kserve: tuple[str, str] | None = None,
    autoscaling: Autoscaling | None = None,
    workload: str = "-",
) -> LoadResult:
    """One measured HTTP point after the warm-up; `kserve=(model, codec)`: --loadgen may use perf_analyzer."""
    if kserve is not None and run.args.loadgen == "perf_analyzer":
        target = url + request.path.split("/v2/models/", 1)[0]  # the route prefix, if any
        model, codec = kserve
        return warmed(
            run,
            lambda s: run_perf_analyzer(target, model, codec, concurrency, s, timeout_s),
            autoscaling,
            workload,
        )
    return warmed(
        run, lambda s: run_wrk(url, request, concurrency, s, timeout_s=timeout_s), autoscaling, workload
    )


def grpc_point(
    run: Run, target: GrpcTarget, model: str, concurrency: int, autoscaling: Autoscaling | None = None
) -> LoadResult:
    """One measured gRPC point after the warm-up: perf_analyzer -i grpc, whatever --loadgen says."""
    return warmed(
        run,
        lambda s: run_perf_analyzer(target.url, model, GRPC_CODEC, concurrency, s, headers=target.metadata),
        autoscaling,
        model,
    )


def warmed(
    run: Run,
    once: Callable[[float], LoadResult],
    autoscaling: Autoscaling | None = None,
    workload: str = "-",
) -> LoadResult:
    """`once(seconds)` for the warm-up (unmeasured), until `autoscaling` has settled under
    `workload` (a model), then for the measured seconds."""
    if run.args.warmup > 0:
        once(run.args.warmup)
    if autoscaling is not None:
        autoscaling.settle(once, workload)
    return once(run.args.seconds)


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
            result = point(run, url, request, concurrency, autoscaling=settled(concurrency))
            run.add(contender, mode.name, "-", "json", result, replicas)
        return
    if contender == PLAIN:
        for name in models:
            request = plain_json(MODELS[name], f"/plain/{name}")
            if (why := check(url, request, b'"output"')) is not None:
                run.fail(contender, mode.name, f"{name}: {why}")
                continue
            for concurrency in run.args.concurrency:
                result = point(
                    run, url, request, concurrency, autoscaling=settled(concurrency), workload=name
                )
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
                result = point(
                    run,
                    url,
                    request,
                    concurrency,
                    kserve=(name, codec),
                    autoscaling=settled(concurrency),
                    workload=name,
                )
                run.add(contender, mode.name, name, codec, result, replicas)
        if grpc is not None:
            if (why := check_grpc(grpc, name)) is not None:
                run.fail(contender, mode.name, f"{name} gRPC: {why}")
                continue
            for concurrency in run.args.concurrency:
                result = grpc_point(run, grpc, name, concurrency, settled(concurrency))
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
            result = point(run, url, request, concurrency, timeout_s=60)
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
    command = [
        sys.executable,
        "-m",
        "benchmarks.noray",
        str(repository),
        str(port),
        "--threads",
        str(run.args.noray_threads),
    ]
    workdir = make_workdir("bnr")
    with (workdir / "noray.log").open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                if http_get(url + "/v2/health/ready")[0] == 200:
                    break
            time.sleep(0.25)
        else:
            run.fail(contender, "uvicorn", f"did not start: {(workdir / 'noray.log').read_text()[-500:]}")
            return
        measure_contender(run, contender, Mode("uvicorn", {}, "proxy", "no Ray"), url, repository)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


# Ready time with many models (the target: 100 models within 3 s of one model's).
MANY_MODELS = 100


def measure_startup(run: Run, modes: list[Mode]) -> None:
    """`serve run configs/app.yaml` (the example repository, runtime auto) to /v2/health/ready;
    in the first mode also 1 and MANY_MODELS copies of the tiny model."""
    scratch = make_workdir("brepo")
    try:
        repository = ROOT / "model_repository"
        if not (repository / "linear").is_dir():
            from serve_app.examples import build_example_repository

            repository = scratch / "model_repository"
            build_example_repository(repository)
        for mode in modes:
            time_serve_run(run, mode, repository, "configs/app.yaml")
        tiny = build_repository(scratch / "tiny", ["tiny"]) / "tiny"
        for count in (1, MANY_MODELS):
            copies = scratch / f"tiny_x{count}"
            for i in range(count):
                shutil.copytree(tiny, copies / f"tiny{i}")
            time_serve_run(run, modes[0], copies, f"{count} tiny model{'s' if count > 1 else ''}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def time_serve_run(run: Run, mode: Mode, repository: Path, what: str) -> None:
    """configs/app.yaml (runtime auto) over `repository`: time to ready, then a SIGINT stop."""
    config = serve_app_config(free_port(), repository, "auto")
    workdir = make_workdir("bst")
    process = ServeProcess(config, mode, workdir, "/v2/health/ready")
    try:
        process.start()
        ready = process.ready_after_s
        haproxy = len(process.haproxy_pids())
    except Exception as exc:  # noqa: BLE001
        run.fail(f"serve run {what}", mode.name, f"startup failed: {str(exc)[-500:]}")
        ready, haproxy = float("nan"), 0
    report = process.stop()
    run.startup.append(
        {
            "what": what,
            "mode": mode.name,
            "ready_s": round(ready, 2),
            "haproxy_processes": haproxy,
            "stop": vars(report),
        }
    )
    log(
        f"serve run {what} ({mode.name}): ready after {ready:.1f} s; SIGINT stop "
        f"{report.seconds:.1f} s, haproxy left {report.haproxy_left}, leftovers {len(report.leftovers)}"
    )
    shutil.rmtree(workdir, ignore_errors=True)


def kill_test(run: Run) -> None:
    """What a hard kill of `serve run` (SIGKILL to its group, no Ctrl-C) leaves behind in HAProxy mode."""
    workdir = make_workdir("bkt")
    config = serve_app_config(free_port(), ROOT / "model_repository", "torch", run.args.deployment)
    config["applications"] = [noop_application(shared=False)]
    process = ServeProcess(config, MODES["haproxy"], workdir, "/noop/")
    try:
        process.start()
    except Exception as exc:  # noqa: BLE001
        run.note(f"kill test did not start: {str(exc)[-300:]}")
        return
    assert process.process is not None
    time.sleep(3)
    tree = descendants(process.process.pid)
    os.killpg(process.process.pid, signal.SIGKILL)
    process.process.wait()
    deadline = time.monotonic() + 20
    while True:
        time.sleep(2)
        left = {p: c for p, c in {**tree, **mentioning(str(workdir))}.items() if alive(p, c)}
        if not left or time.monotonic() > deadline:
            break
    haproxy_left = [p for p, c in left.items() if "haproxy" in c.split(" ")[0]]
    port_open = False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", process.port), timeout=1):
        port_open = True
    entry = {
        "haproxy_left": len(haproxy_left),
        "leftovers": [f"{p} {c[:100]}" for p, c in left.items()],
        "serve_port_open": port_open,
    }
    for pid in left:  # ours (started by that serve run): end them by pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.process = None
    run.request_path.append({"mode": "haproxy", "kill_test": entry})
    log(f"kill test (SIGKILL serve run's group, haproxy mode): {entry}")
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
