"""A `serve run`'s life outside its points: how long until it is ready (configs/app.yaml; 1 and
MANY_MODELS tiny models), how its SIGINT stop goes and what it leaves, and what a SIGKILL of it
leaves behind."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from benchmarks.contenders import noop_application, serve_app_config
from benchmarks.results import Run, log
from benchmarks.servers import MODES, ROOT, Mode, ServeProcess, leftovers, make_workdir
from benchmarks.workloads import build_repository
from devtools.processes import accepts, descendants, free_port, kill

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
    process.process = None
    time.sleep(2)  # what the kill orphaned may still start more (an HAProxy reload)
    left, described, haproxy_left = leftovers(tree, workdir, 18)
    entry = {"haproxy_left": haproxy_left, "leftovers": described, "serve_port_open": accepts(process.port)}
    kill(left)  # ours: started by that `serve run`
    run.request_path.append({"mode": "haproxy", "kill_test": entry})
    log(f"kill test (SIGKILL serve run's group, haproxy mode): {entry}")
    shutil.rmtree(workdir, ignore_errors=True)
