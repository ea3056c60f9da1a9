"""serve_app benchmark: one command, every contender, one table.

    python -m benchmarks.run              # full: 3 request-path modes, c = 1/8/64 (~40 min on 2 cores)
    python -m benchmarks.run --quick      # stock + haproxy modes, c = 1/64, 5 s points (~15 min)
    python -m benchmarks.run --smoke      # 1 s points, tiny model, one shared cluster (~50 s; CI)
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
* each Ray contender in each request-path mode (benchmarks.servers.MODES: stock proxy,
  RAY_SERVE_THROUGHPUT_OPTIMIZED direct ingress, HAProxy), each in its own fresh `serve run`
  (own Ray node), with the replica count per point, the controller's autoscaling decisions,
  and what its SIGINT stop left running;
* a 4 MiB FP32 round trip (binary vs JSON), `serve run configs/app.yaml` time to ready, and
  what a SIGKILLed `serve run` leaves behind in HAProxy mode.

Throughput counts requests/s; each request carries one sample except in the transport
test. `xlimit` = throughput / in-process samples/s at batch 64 (same model, same run);
`xplain` = throughput / plain Ray Serve's in the same mode at the same concurrency. The
machine's load average is recorded before, after and with every point. Results:
benchmarks/results/results.json, results.md (the printed tables) and throughput.png.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import loadgen
from benchmarks.loadgen import LoadResult, Request, run_wrk
from benchmarks.servers import (
    MODES,
    ROOT,
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
)

RESULTS = ROOT / "benchmarks" / "results"
APP_CONFIG = ROOT / "configs" / "app.yaml"
SERVE_APP = "serve_app"
TRITON = "serve_app triton"
PLAIN = "plain Ray Serve"
NOOP = "no-op Ray Serve"
NORAY = "serve_app no Ray"
LIMIT = "in-process limit"
CEILING = "wrk ceiling"
DEPLOYMENT_OVERRIDES = ""  # --deployment (JSON), set by main()
RAY_CONTENDERS = (SERVE_APP, TRITON, PLAIN, NOOP)
ALL_CONTENDERS = (*RAY_CONTENDERS, NORAY)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- settings -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="stock + haproxy, concurrency 1/64, 5 s points")
    preset.add_argument("--smoke", action="store_true", help="seconds-long points, shared cluster, no plot")
    parser.add_argument("--modes", help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--models", help="comma list of mlp4096, mlp1024, tiny")
    parser.add_argument("--concurrency", help="comma list, e.g. 1,8,64")
    parser.add_argument("--contenders", help=f"comma list of {', '.join(ALL_CONTENDERS)}")
    parser.add_argument("--codecs", help="comma list of binary, json (serve_app)")
    parser.add_argument("--seconds", type=float, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each point")
    parser.add_argument("--shared", action="store_true", help="all Ray contenders in one serve run per mode")
    parser.add_argument("--no-transport", action="store_true", help="skip the 4 MiB round trip")
    parser.add_argument("--no-startup", action="store_true", help="skip `serve run configs/app.yaml` timing")
    parser.add_argument(
        "--kill-test", action="store_true", help="SIGKILL a haproxy-mode serve run, check orphans"
    )
    parser.add_argument("--noray-threads", type=int, default=1, help="torch threads of the no-Ray server")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every serve run",
    )
    parser.add_argument(
        "--deployment",
        default="{}",
        metavar="JSON",
        help="overrides for serve_app's deployment in configs/app.yaml, e.g. '{\"num_replicas\": 2}'",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--tag", default="", help="suffix for result file names")
    args = parser.parse_args(argv)

    if args.smoke:
        defaults = dict(
            modes="stock",
            models="tiny",
            concurrency="4",
            seconds=1,
            warmup=0,
            codecs="binary,json",
            contenders=",".join((SERVE_APP, TRITON, PLAIN, NOOP)),
        )
        args.shared = True
        args.no_transport = True
        args.no_startup = True
    elif args.quick:
        defaults = dict(
            modes="stock,haproxy",
            models="mlp4096,mlp1024,tiny",
            concurrency="1,64",
            seconds=5,
            warmup=2,
            codecs="binary,json",
            contenders=",".join((SERVE_APP, TRITON, PLAIN, NOOP)),
        )
    else:
        defaults = dict(
            modes="stock,throughput,haproxy",
            models="mlp4096,mlp1024,tiny",
            concurrency="1,8,64",
            seconds=8,
            warmup=2,
            codecs="binary,json",
            contenders=",".join((SERVE_APP, TRITON, PLAIN, NOOP, NORAY)),
        )
        args.kill_test = True
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.modes = [MODES[m] for m in args.modes.split(",")]
    args.models = args.models.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.codecs = args.codecs.split(",")
    args.contenders = args.contenders.split(",")
    unknown = set(args.contenders) - set(ALL_CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}")
    return args


# --- measuring ------------------------------------------------------------------------------------


class Run:
    """Everything measured in one invocation; serialised to results.json."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.limits: dict[str, dict[str, Any]] = {}  # per model: the best of limit_samples
        self.limit_samples: dict[str, list[dict[str, Any]]] = {}
        self.ceiling: list[dict[str, Any]] = []
        self.transport: list[dict[str, Any]] = []
        self.startup: list[dict[str, Any]] = []
        self.request_path: list[dict[str, Any]] = []
        self.started = datetime.datetime.now().isoformat(timespec="seconds")
        self.load_before = loadavg()

    def point(self, url: str, request: Request, concurrency: int, timeout_s: float = 30.0) -> LoadResult:
        if self.args.warmup > 0:
            run_wrk(url, request, concurrency, self.args.warmup, timeout_s=timeout_s)
        return run_wrk(url, request, concurrency, self.args.seconds, timeout_s=timeout_s)

    def add(
        self, contender: str, mode: str, model: str, codec: str, result: LoadResult, replicas: Any = None
    ) -> None:
        extra: dict[str, Any] = {"load1": loadavg()[0]}
        if replicas is not None:
            extra["replicas"] = replicas()
        row = {
            "contender": contender,
            "mode": mode,
            "model": model,
            "codec": codec,
            **result.as_dict(),
            **extra,
        }
        self.rows.append(row)
        log(
            f"{contender:<26} {mode:<16} {model:<8} {codec:<6} c={result.concurrency:<3} "
            f"{result.throughput:9.1f} req/s  p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms"
            + (f"  errors {result.error_detail}" if result.errors else "")
            + (f"  replicas {extra['replicas']}" if "replicas" in extra else "")
            + f"  load {extra['load1']}"
        )

    def note(self, message: str) -> None:
        self.notes.append(message)
        log(f"NOTE: {message}")


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


def measure_generator_ceiling(run: Run) -> None:
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


def serve_app_config(
    port: int, repository: Path, runtime: str, import_path: str | None = None
) -> dict[str, Any]:
    """configs/app.yaml as shipped, with the port, repository and runtime swapped."""
    config = yaml.safe_load(APP_CONFIG.read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update({"model_repository": str(repository), "runtime": runtime})
    if import_path:
        app["import_path"] = import_path
    overrides = json.loads(DEPLOYMENT_OVERRIDES) if DEPLOYMENT_OVERRIDES else {}
    if "num_replicas" in overrides:
        app["deployments"][0].pop("autoscaling_config", None)
    app["deployments"][0].update(overrides)
    return config


# Serve's default max_ongoing_requests (5) makes the proxy back off and retry once 64 clients
# queue, which would cripple the baselines for a reason unrelated to what they measure: they get
# serve_app's value (configs/app.yaml: 64). num_cpus 0 only when they share a cluster (--shared).
BASELINE_MAX_ONGOING = 64


def _baseline_deployment(name: str, shared: bool) -> dict[str, Any]:
    deployment: dict[str, Any] = {"name": name, "max_ongoing_requests": BASELINE_MAX_ONGOING}
    if shared:
        deployment["ray_actor_options"] = {"num_cpus": 0}
    return deployment


def plain_application(repository: Path, models: list[str], shared: bool) -> dict[str, Any]:
    return {
        "name": "plain",
        "route_prefix": "/plain",
        "import_path": "benchmarks.baselines:plain_app",
        "args": {"model_paths": {m: str(model_file(repository, m)) for m in models}},
        "deployments": [_baseline_deployment("PlainTorch", shared)],
    }


def noop_application(shared: bool) -> dict[str, Any]:
    return {
        "name": "noop",
        "route_prefix": "/noop",
        "import_path": "benchmarks.baselines:noop_app",
        "args": {},
        "deployments": [_baseline_deployment("Noop", shared)],
    }


def triton_available() -> str | None:
    """None if the Triton runtime can be tried, else why not."""
    if importlib.util.find_spec("tritonserver") is None:
        return "`import tritonserver` fails"
    if importlib.util.find_spec("serve_app.runtimes.triton") is None:
        return "serve_app.runtimes.triton does not exist yet"
    return None


PROBES = {
    SERVE_APP: "/v2/health/ready",
    TRITON: "/v2/health/ready",
    PLAIN: "/plain/ready",
    NOOP: "/noop/",
}


SERVE_APPS = (SERVE_APP, TRITON)
# Route prefixes when several serve_app variants share one cluster (--shared); alone, each takes "/".
SHARED_PREFIX = {SERVE_APP: "", TRITON: "/triton"}


def ray_groups(run: Run) -> list[list[str]]:
    """Which Ray contenders share one `serve run`: one each, or all together with --shared."""
    wanted = [c for c in RAY_CONTENDERS if c in run.args.contenders]
    if TRITON in wanted:
        why = triton_available()
        if why:
            run.note(f"serve_app with runtime triton skipped: {why}")
            wanted.remove(TRITON)
    if run.args.shared:
        return [wanted] if wanted else []
    return [[c] for c in wanted]


def prefix(contender: str, group: list[str]) -> str:
    return SHARED_PREFIX.get(contender, "") if len(group) > 1 else ""


def build_config(group: list[str], repository: Path, port: int, shared: bool) -> dict[str, Any]:
    config = serve_app_config(port, repository, "torch")
    template = config["applications"].pop()
    for contender in group:
        if contender in SERVE_APPS:
            app = json.loads(json.dumps(template))
            app["args"]["runtime"] = "triton" if contender == TRITON else "torch"
            if prefix(contender, group):
                app["name"] = f"{template['name']}-{prefix(contender, group).strip('/')}-variant"
                app["route_prefix"] = prefix(contender, group)
            config["applications"].append(app)
        elif contender == PLAIN:
            config["applications"].append(plain_application(repository, run_models(repository), shared))
        elif contender == NOOP:
            config["applications"].append(noop_application(shared))
    return config


def run_models(repository: Path) -> list[str]:
    return [m for m in ("mlp4096", "mlp1024", "tiny") if (repository / m).is_dir()]


def measure_ray_group(run: Run, group: list[str], mode: Mode, repository: Path) -> None:
    workdir = make_workdir("bsv")
    config = build_config(group, repository, free_port(), run.args.shared)
    extra_env = dict(item.split("=", 1) for item in run.args.env)
    lead = group[0]
    process = ServeProcess(config, mode, workdir, prefix(lead, group) + PROBES[lead], extra_env=extra_env)
    label = "+".join(group)
    log(f"starting {label} in mode {mode.name}")
    try:
        process.start()
    except Exception as exc:  # noqa: BLE001 - one contender failing must not end the benchmark
        run.note(f"{label} in mode {mode.name} did not start: {str(exc)[-800:]}")
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
                measure_contender(
                    run, contender, mode, url, repository, replicas=process.replica_counts, prefix=path
                )
            except Exception as exc:  # noqa: BLE001 - record and go on with the next contender
                run.note(f"{contender} in mode {mode.name} failed: {type(exc).__name__}: {str(exc)[-600:]}")
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
    run: Run, contender: str, mode: Mode, url: str, repository: Path, replicas: Any = None, prefix: str = ""
) -> None:
    """All points of one contender (its app under route `prefix`); `replicas()` is recorded with each."""
    models = [m for m in run.args.models if m in run_models(repository)]
    if contender == NOOP:
        request = noop_request("/noop/")
        if (why := check(url, request)) is not None:
            run.note(f"{contender} {mode.name}: {why}")
            return
        for concurrency in run.args.concurrency:
            run.add(contender, mode.name, "-", "json", run.point(url, request, concurrency), replicas)
        return
    if contender == PLAIN:
        for name in models:
            request = plain_json(MODELS[name], f"/plain/{name}")
            if (why := check(url, request, b'"output"')) is not None:
                run.note(f"{contender} {mode.name} {name}: {why}")
                continue
            for concurrency in run.args.concurrency:
                run.add(contender, mode.name, name, "json", run.point(url, request, concurrency), replicas)
        return
    # serve_app (any runtime): small models first, so scale-up from the heavy one comes last.
    for name in sorted(models, key=lambda m: MODELS[m].width):
        for codec in run.args.codecs:
            request = (kserve_binary if codec == "binary" else kserve_json)(MODELS[name])
            request = dataclasses.replace(request, path=prefix + request.path)
            if (why := check(url, request, b'"output__0"')) is not None:
                run.note(f"{contender} {mode.name} {name} {codec}: {why}")
                continue
            for concurrency in run.args.concurrency:
                run.add(contender, mode.name, name, codec, run.point(url, request, concurrency), replicas)
    if not run.args.no_transport and (repository / "blob4m").is_dir():
        measure_transport(run, contender, mode.name, url, prefix)


def measure_transport(run: Run, contender: str, mode: str, url: str, prefix: str = "") -> None:
    model = MODELS["blob4m"]
    for codec, levels in (("binary", (1, 4)), ("json", (1,))):
        request = (kserve_binary if codec == "binary" else kserve_json)(model)
        request = dataclasses.replace(request, path=prefix + request.path)
        if (why := check(url, request, b'"output__0"')) is not None:
            run.note(f"{contender} {mode} transport {codec}: {why}")
            continue
        for concurrency in levels:
            result = run.point(url, request, concurrency, timeout_s=60)
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
            run.note(f"{contender} did not start: {(workdir / 'noray.log').read_text()[-500:]}")
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


def measure_startup(run: Run, modes: list[Mode]) -> None:
    """`serve run configs/app.yaml` (the example repository, runtime auto) to /v2/health/ready."""
    repository = ROOT / "model_repository"
    scratch = None
    if not (repository / "linear").is_dir():
        from serve_app.examples import build_example_repository

        scratch = make_workdir("brepo")
        repository = scratch / "model_repository"
        build_example_repository(repository)
    for mode in modes:
        config = yaml.safe_load(APP_CONFIG.read_text())
        config["http_options"]["port"] = free_port()
        config["applications"][0]["args"]["model_repository"] = str(repository)
        workdir = make_workdir("bst")
        process = ServeProcess(config, mode, workdir, "/v2/health/ready")
        try:
            process.start()
            ready = process.ready_after_s
            haproxy = len(process.haproxy_pids())
        except Exception as exc:  # noqa: BLE001
            run.note(f"startup in mode {mode.name} failed: {str(exc)[-500:]}")
            ready, haproxy = float("nan"), 0
        report = process.stop()
        run.startup.append(
            {
                "mode": mode.name,
                "ready_s": round(ready, 2),
                "haproxy_processes": haproxy,
                "stop": vars(report),
            }
        )
        log(
            f"serve run configs/app.yaml ({mode.name}): ready after {ready:.1f} s; SIGINT stop "
            f"{report.seconds:.1f} s, haproxy left {report.haproxy_left}, leftovers {len(report.leftovers)}"
        )
        shutil.rmtree(workdir, ignore_errors=True)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def kill_test(run: Run) -> None:
    """What a hard kill of `serve run` (SIGKILL to its group, no Ctrl-C) leaves behind in HAProxy mode."""
    workdir = make_workdir("bkt")
    config = serve_app_config(free_port(), ROOT / "model_repository", "torch")
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


# --- reporting ------------------------------------------------------------------------------------


def add_ratios(run: Run) -> None:
    plain = {
        (r["mode"], r["model"], r["concurrency"]): r["throughput"]
        for r in run.rows
        if r["contender"] == PLAIN
    }
    for row in run.rows:
        limit = run.limits.get(row["model"], {}).get("batch64", {}).get("samples_per_s")
        row["x_limit"] = row["throughput"] / limit if limit and row["model"] != "-" else None
        base = plain.get((row["mode"], row["model"], row["concurrency"]))
        row["x_plain"] = row["throughput"] / base if base and row["contender"] != PLAIN else None
        stock = plain.get(("stock", row["model"], row["concurrency"]))
        row["x_plain_stock"] = row["throughput"] / stock if stock and row["contender"] != PLAIN else None


def table(run: Run) -> str:
    header = (
        f"| {'contender':<24} | {'mode':<16} | {'model':<7} | {'codec':<6} | {'conc':>4} | {'req/s':>8} "
        f"| {'p50 ms':>8} | {'p99 ms':>8} | {'err':>4} | {'xlimit':>6} | {'xplain':>6} |"
    )
    lines = [header, "|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|"]
    for name, entry in run.limits.items():
        best = entry["batch64"]["samples_per_s"]
        for sample in entry["samples"]:
            b64 = sample["batch64"]
            lines.append(
                f"| {LIMIT + ' b64 ' + sample['when']:<24} | {'2 threads':<16} | {name:<7} | {'-':<6} "
                f"| {'-':>4} | {b64['samples_per_s']:>8.1f} | {b64['p50_ms']:>8.2f} | {b64['p99_ms']:>8.2f} "
                f"| {0:>4} | {b64['samples_per_s'] / best:>6.2f} | {'':>6} |"
            )
    for row in run.rows:
        x_limit = f"{row['x_limit']:.2f}" if row.get("x_limit") else ""
        x_plain = f"{row['x_plain']:.2f}" if row.get("x_plain") else ""
        lines.append(
            f"| {row['contender']:<24} | {row['mode']:<16} | {row['model']:<7} | {row['codec']:<6} "
            f"| {row['concurrency']:>4} | {row['throughput']:>8.1f} | {row['p50_ms']:>8.2f} "
            f"| {row['p99_ms']:>8.2f} "
            f"| {row['errors']:>4} | {x_limit:>6} | {x_plain:>6} |"
        )
    return "\n".join(lines)


def transport_table(run: Run) -> str:
    lines = [
        "| contender | mode | codec | conc | req/s | GB/s tensor each way | GB/s wire both ways | body MiB "
        "| p50 ms | err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in run.transport:
        lines.append(
            f"| {t['contender']} | {t['mode']} | {t['codec']} | {t['concurrency']} | {t['throughput']:.1f} "
            f"| {t['gb_per_s']:.3f} | {t['wire_gb_per_s']:.3f} | {t['request_bytes'] / 2**20:.1f} "
            f"| {t['p50_ms']:.1f} | {t['errors']} |"
        )
    return "\n".join(lines)


def request_path_table(run: Run) -> str:
    lines = [
        "| mode | contenders | ready s | SIGINT stop s | graceful | haproxy seen/left | leftovers | "
        "autoscaling: controller decisions (replicas at end) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in run.request_path:
        if "kill_test" in e:
            k = e["kill_test"]
            lines.append(
                f"| {e['mode']} (SIGKILL test) | noop | | | no | -/{k['haproxy_left']} | "
                f"{len(k['leftovers'])} | serve port open after: {k['serve_port_open']} |"
            )
            continue
        stop = e.get("stop", {})
        events = [_short_event(x) for x in e.get("autoscaling_events", [])]
        auto = "; ".join(events) or "none"
        auto += f" ({e.get('replicas_at_end')})"
        lines.append(
            f"| {e['mode']} | {'+'.join(e['contenders'])} | {e['ready_s']} | {stop.get('seconds', 0):.1f} "
            f"| {stop.get('graceful')} | {stop.get('haproxy_seen')}/{stop.get('haproxy_left')} "
            f"| {len(stop.get('leftovers', []))} | {auto} |"
        )
    for s in run.startup:
        stop = s["stop"]
        lines.append(
            f"| {s['mode']} (configs/app.yaml) | serve_app | {s['ready_s']} | {stop['seconds']:.1f} "
            f"| {stop['graceful']} | {stop['haproxy_seen']}/{stop['haproxy_left']} "
            f"| {len(stop['leftovers'])} | |"
        )
    return "\n".join(lines)


def _short_event(line: str) -> str:
    """`Upscaling Deployment(name='X', app='a') from 1 to 2 replicas. Current ongoing requests: 63.0, ..`."""
    words = line.replace("Deployment(name=", "").split()
    try:
        direction, name = words[0], words[1].split("'")[1]
        counts = line.split(" from ", 1)[1].split(" replicas", 1)[0].replace(" to ", "->")
        ongoing = line.split("ongoing requests: ", 1)[1].split(",", 1)[0]
    except IndexError:
        return line[:80]
    return f"{name} {direction.lower().removesuffix('ing')} {counts} at {ongoing} ongoing"


def targets(run: Run) -> list[str]:
    out = []

    def rows(**match: Any) -> list[dict]:
        return [r for r in run.rows if all(r.get(k) == v for k, v in match.items())]

    for contender in SERVE_APPS:
        for mode in run.args.modes:
            best = rows(contender=contender, mode=mode.name, model="mlp4096", codec="binary", concurrency=64)
            if best and best[0].get("x_limit") is not None:
                out.append(
                    f"T1 {contender} [{mode.name}] mlp4096 c=64: {best[0]['throughput']:.0f}/s = "
                    f"{best[0]['x_limit']:.2f}x in-process limit (target >= 0.7)"
                )
            for model in run.args.models:
                for r in rows(
                    contender=contender, mode=mode.name, model=model, codec="binary", concurrency=64
                ):
                    if r.get("x_plain"):
                        stock = r.get("x_plain_stock")
                        versus_stock = f", {stock:.2f}x plain in stock mode" if stock else ""
                        out.append(
                            f"T2 {contender} [{mode.name}] {model} c=64: {r['x_plain']:.2f}x plain Ray Serve "
                            f"same mode{versus_stock} (target >= 3)"
                        )
            ours = rows(contender=contender, mode=mode.name, model="tiny", codec="binary", concurrency=1)
            noop = rows(contender=NOOP, mode=mode.name, concurrency=1)
            if ours and noop:
                delta = ours[0]["p50_ms"] - noop[0]["p50_ms"]
                out.append(
                    f"T3 {contender} [{mode.name}] tiny c=1 p50 {ours[0]['p50_ms']:.2f} ms vs no-op "
                    f"{noop[0]['p50_ms']:.2f} ms: {delta:+.2f} ms (target <= +1 ms)"
                )
    for t in run.transport:
        if t["codec"] == "binary":
            out.append(
                f"T4 {t['contender']} [{t['mode']}] 4 MiB binary c={t['concurrency']}: "
                f"{t['gb_per_s']:.3f} GB/s of tensor each way, {t['wire_gb_per_s']:.3f} GB/s on the wire "
                "(target >= 0.5)"
            )
    for s in run.startup:
        out.append(
            f"T5 serve run configs/app.yaml [{s['mode']}]: ready after {s['ready_s']} s (target <= 15)"
        )
    return out


MODE_STYLES = {"stock": ":", "stock-quiet": ":", "throughput": "-.", "haproxy": "-", "uvicorn": "--",
               "throughput-proxy": (0, (3, 1, 1, 1, 1, 1))}  # fmt: skip


def plot(run: Run, path: Path) -> bool:
    """Throughput vs concurrency, one panel per model: colour = contender (+codec), line = mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        run.note("matplotlib missing (pip install matplotlib): no plot")
        return False
    models = [m for m in run.args.models if any(r["model"] == m for r in run.rows)]
    if not models:
        return False
    kinds = sorted({(r["contender"], r["codec"]) for r in run.rows if r["model"] in models})
    colors = {kind: plt.get_cmap("tab10")(i % 10) for i, kind in enumerate(kinds)}
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.2), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, model in zip(axes[0], models, strict=True):
        series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
        for r in run.rows:
            if r["model"] == model:
                series.setdefault((r["contender"], r["codec"], r["mode"]), []).append(
                    (r["concurrency"], r["throughput"])
                )
        for (contender, codec, mode), points in sorted(series.items()):
            points.sort()
            label = f"{contender} {codec} [{mode}]"
            (line,) = ax.plot(
                [p[0] for p in points], [p[1] for p in points], linestyle=MODE_STYLES.get(mode, "-"),
                color=colors[(contender, codec)], marker="o", markersize=3, linewidth=1.3, label=label,
            )  # fmt: skip
            handles.setdefault(label, line)
        limit = run.limits.get(model, {}).get("batch64", {}).get("samples_per_s")
        if limit:
            handles["in-process limit, batch 64"] = ax.axhline(
                limit, color="black", linewidth=1.5, linestyle=":"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients (1 sample per request)")
        ax.set_ylabel("requests/s")
        ax.set_title(f"{model}: {MODELS[model].description}", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=6, frameon=False)
    load = f"load avg {run.load_before[0]} before, {loadavg()[0]} after"
    fig.suptitle(f"serve_app benchmark: {os.cpu_count()} cores, {load}", fontsize=9)
    rows = (len(handles) + 3) // 4
    fig.tight_layout(rect=(0, 0.04 + 0.025 * rows, 1, 1))
    fig.savefig(path, dpi=64, pil_kwargs={"optimize": True})
    plt.close(fig)
    return True


def write(run: Run) -> None:
    out: Path = run.args.out
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{run.args.tag}" if run.args.tag else ""
    import ray
    import torch

    data = {
        "started": run.started,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "ray": ray.__version__,
            "torch": torch.__version__,
            "load_avg_before": run.load_before,
            "load_avg_after": loadavg(),
        },
        "settings": {
            "modes": [m.name for m in run.args.modes],
            "models": run.args.models,
            "concurrency": run.args.concurrency,
            "seconds": run.args.seconds,
            "warmup": run.args.warmup,
            "contenders": run.args.contenders,
            "codecs": run.args.codecs,
            "shared": run.args.shared,
            "env": run.args.env,
            "deployment_overrides": run.args.deployment,
            "mode_descriptions": {m.name: m.description for m in run.args.modes},
        },
        "generator_ceiling": run.ceiling,
        "inprocess_limit": run.limits,
        "rows": run.rows,
        "transport": run.transport,
        "startup": run.startup,
        "request_path": run.request_path,
        "targets": targets(run),
        "notes": run.notes,
    }
    (out / f"results{suffix}.json").write_text(json.dumps(data, separators=(",", ":"), default=str) + "\n")
    text = "\n\n".join(
        [
            f"load average before {run.load_before}, after {data['machine']['load_avg_after']} "
            f"({os.cpu_count()} cores); {run.args.seconds:g} s per point after {run.args.warmup:g} s warm-up",
            table(run),
            transport_table(run) if run.transport else "",
            request_path_table(run),
            "\n".join(f"- {t}" for t in data["targets"]),
            "\n".join(f"- NOTE: {n}" for n in run.notes),
        ]
    )
    (out / f"results{suffix}.md").write_text(text + "\n")
    print("\n" + text, flush=True)
    if not run.args.smoke and plot(run, out / f"throughput{suffix}.png"):
        log(f"wrote {out / f'throughput{suffix}.png'}")
    log(f"wrote {out / f'results{suffix}.json'} and results{suffix}.md")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    global DEPLOYMENT_OVERRIDES
    DEPLOYMENT_OVERRIDES = args.deployment
    if not loadgen.available():
        sys.exit("wrk is not installed: apt-get install wrk")
    run = Run(args)
    log(
        f"load average before: {run.load_before} on {os.cpu_count()} cores; modes "
        f"{[m.name for m in args.modes]}; models {args.models}; concurrency {args.concurrency}"
    )
    scratch = make_workdir("bench")
    try:
        names = list(dict.fromkeys([*args.models, *([] if args.no_transport else ["blob4m"])]))
        repository = build_repository(scratch / "repository", names)
        measure_generator_ceiling(run)
        measure_inprocess(run, repository, "start")
        if NORAY in args.contenders:
            measure_noray(run, NORAY, repository)
        for mode in args.modes:
            for group in ray_groups(run):
                measure_ray_group(run, group, mode, repository)
        if not args.no_startup:
            measure_startup(run, [m for m in args.modes if m.name in ("stock", "haproxy")] or args.modes[:1])
        if args.kill_test:
            kill_test(run)
        measure_inprocess(run, repository, "end")
    finally:
        add_ratios(run)
        write(run)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
