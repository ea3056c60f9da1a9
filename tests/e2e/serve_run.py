"""`serve run` processes against a test Ray cluster: their configs, start and stop, and the
replicas they run as Serve and /proc see them."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devtools.processes import (
    Process,
    alive,
    answers,
    command_line,
    descendants,
    interrupt_group,
    spawn,
    tcp_listeners,
    wait_for,
    wait_ready,
)
from devtools.serve_configs import CONFIGS, REPLICA_GRPC_PORTS, REPLICA_HTTP_PORTS, shipped

ROOT = Path(__file__).resolve().parents[2]
APP_CONFIG = CONFIGS / "app.yaml"
SERVE = str(Path(sys.executable).with_name("serve"))
# The runtimes `served` and the other per-module apps are parametrised by: triton where the
# in-process build is installed (`python -m serve_app.triton_install install`; CI installs it).
RUNTIMES = ["torch", *(["triton"] if importlib.util.find_spec("tritonserver") else [])]
# configs/app.yaml's application and deployment names.
APP, DEPLOYMENT = "triton", "InferenceServer"


def app_config(
    args: dict[str, Any] | None = None, deployment: dict[str, Any] | None = None, port: int | None = None
) -> dict[str, Any]:
    """configs/app.yaml on free ports (HTTP: `port` if given), its app args and deployment
    options overridden."""
    config = shipped("app.yaml", port)
    app = config["applications"][0]
    app["args"].update(args or {})
    app["deployments"][0].update(deployment or {})
    return config


def fixed_replicas(count: int, **options: Any) -> dict[str, Any]:
    """Deployment options for `count` replicas without autoscaling (and any other `options`)."""
    return {"autoscaling_config": None, "num_replicas": count, **options}


class ServeRun:
    """`serve run <config>` in its own process group; stopped with SIGINT like Ctrl-C.

    `address=None` lets `serve run` start its own Ray, as a user does. `env` overrides the
    child's environment (a value of None removes the variable). `local_copy`: a local copy of a
    repository the app reads from object storage (the tests' reference for outputs).
    """

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        address: str | None = None,
        env: dict[str, str | None] | None = None,
        local_copy: Path | None = None,
    ) -> None:
        self.config = config
        self.local_copy = local_copy
        self.port = config["http_options"]["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config_path = workdir / f"app-{self.port}.yaml"
        self.log_path = workdir / f"serve-{self.port}.log"
        self.address = address
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.ready_after_s = float("nan")
        self.stop_s = float("nan")
        # True when `serve run` exited by itself after SIGINT (before the SIGKILL backstop).
        self.exited_on_sigint = False
        # Every process seen below `serve run` just before it was stopped, and those of
        # them still running when `serve run` had exited (before the SIGKILL backstop).
        self.seen_processes: set[Process] = set()
        self.survivors: set[Process] = set()
        self.survivor_commands: list[str] = []

    def launch(self) -> ServeRun:
        """Start `serve run` without waiting for the app (see `wait_ready`, `wait_log`)."""
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        command = [SERVE, "run", str(self.config_path)]
        if self.address:
            command += ["--address", self.address]
        self._started = time.monotonic()
        self.process = spawn(command, self.log_path, cwd=self.workdir, env=self._env())
        return self

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def start(self, timeout_s: float = 180.0) -> ServeRun:
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.ready_after_s = time.monotonic() - self._started
        return self

    def wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        wait_ready(
            self.process, lambda: answers(self.url + "/v2/health/ready"), timeout_s, "serve run", self.log
        )

    def wait_log(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """Wait until the log matches `pattern` (a regex); returns the match."""
        assert self.process is not None
        try:
            return wait_ready(
                self.process,
                lambda: re.search(pattern, self.full_log()),
                timeout_s,
                "serve run",
                self.log,
                0.5,
            )
        except (RuntimeError, TimeoutError):
            raise AssertionError(f"{pattern!r} not in the serve run log:\n{self.log()}") from None

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log(self) -> str:
        return self.full_log()[-6000:]

    def stop(self, timeout_s: float = 45.0) -> float:
        """SIGINT, wait; returns how long `serve run` took to exit. Kills the group after.

        On a shared cluster (`address`), a `serve run` that did not shut Serve down itself
        (killed after `timeout_s`, or dead before the stop) would leave Serve's controller
        holding its app and HTTP port, and the next module's `serve run` would never get
        ready; so Serve is then shut down from a separate driver.
        """
        if self.process is None:
            return 0.0
        if self.process.returncode is not None and not math.isnan(self.stop_s):
            return self.stop_s  # already stopped
        was_running = self.process.poll() is None
        if was_running:
            self.seen_processes = descendants(self.process.pid)

        def outlived() -> None:
            self.survivors = alive(self.seen_processes)
            self.survivor_commands = [command_line(pid)[:120] for pid, _ in sorted(self.survivors)]

        # Ray's dashboard helpers outlive `serve run` in its process group: the SIGKILL after.
        self.stop_s, exited = interrupt_group(self.process, timeout_s, on_exit=outlived)
        self.exited_on_sigint = was_running and exited
        if self.address and not self.exited_on_sigint:
            self._shutdown_serve()
        return self.stop_s

    def _shutdown_serve(self) -> None:
        script = (
            "import sys, ray\nfrom ray import serve\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\nserve.shutdown()\n"
        )
        with contextlib.suppress(subprocess.TimeoutExpired), self.log_path.open("ab") as log:
            subprocess.run(
                [sys.executable, "-c", script, str(self.address)],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )

    def __enter__(self) -> ServeRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the replicas, as the Serve controller and /proc see them ------------------------------------


def replica_states(app: str = APP, deployment: str = DEPLOYMENT) -> dict[str, int]:
    """RUNNING/STARTING/... replica counts of a deployment, from the Serve controller of the
    cluster this process is connected to ({} while it has none)."""
    from ray import serve
    from ray.exceptions import RayActorError
    from ray.serve import context

    try:
        status = serve.status()
    except RayActorError:
        # The cached handle is the controller of an earlier `serve run` (SIGINT killed it).
        context._disconnect()
        status = serve.status()
    application = status.applications.get(app)
    if application is None or deployment not in application.deployments:
        return {}
    states = application.deployments[deployment].replica_states
    return {str(getattr(k, "value", k)): n for k, n in states.items() if n}


def wait_for_replicas(states: dict[str, int], timeout_s: float, period_s: float = 0.5) -> float:
    """Wait until configs/app.yaml's deployment has exactly `states` (e.g. {"RUNNING": 2});
    returns the monotonic time it first had. The controller reports a replica it has not yet
    noticed the death of as it last saw it: after a kill, wait for its replacement first."""
    seen: dict[str, int] = {}

    def reached() -> bool:
        nonlocal seen
        seen = replica_states()
        return seen == states

    return wait_for(reached, timeout_s, lambda: f"replicas {states} (last seen {seen})", period_s)


def replica_processes(root: int, app: str = APP, deployment: str = DEPLOYMENT) -> set[Process]:
    """Live Serve replica workers of `app`'s `deployment` below `root` (the driver that
    started the Ray cluster: pytest for the session cluster, else `serve run`)."""
    title = f"ray::ServeReplica:{app}:{deployment}"
    return {(pid, start) for pid, start in descendants(root) if command_line(pid).startswith(title)}


def wait_for_replica_processes(
    count: int, exclude: set[Process] | None = None, timeout_s: float = 60.0
) -> set[Process]:
    """`count` live replica processes of this process's Ray cluster, some of them not in
    `exclude` (a replacement); a stopped app's replicas may take a moment to exit."""
    found: set[Process] = set()

    def reached() -> bool:
        nonlocal found
        found = replica_processes(os.getpid())
        return len(found) == count and (exclude is None or bool(found - exclude))

    wait_for(reached, timeout_s, lambda: f"{count} replica processes (last seen {sorted(found)})")
    return found


@dataclass(frozen=True)
class Endpoint:
    """One way to reach the deployment: the front ports (HAProxy), or one replica's own servers."""

    name: str
    http: str  # host:port
    grpc: str


def replica_endpoints(app: str = APP, deployment: str = DEPLOYMENT) -> dict[Process, Endpoint]:
    """Every replica of the session cluster's `app` that listens on its own HTTP and gRPC ports."""
    found = {}
    for process in replica_processes(os.getpid(), app, deployment):
        ports = [port for _, port, _ in tcp_listeners({process[0]})]
        http = [p for p in ports if p in REPLICA_HTTP_PORTS]
        grpc = [p for p in ports if p in REPLICA_GRPC_PORTS]
        if http and grpc:
            found[process] = Endpoint(f"replica {process[0]}", f"127.0.0.1:{http[0]}", f"127.0.0.1:{grpc[0]}")
    return found


def endpoints(run: ServeRun, count: int, timeout_s: float = 180.0) -> list[Endpoint]:
    """The front ports and each replica's own, once `count` replicas listen on theirs."""
    wait_for(lambda: len(replica_endpoints()) == count, timeout_s, f"{count} replicas listening")
    front = Endpoint("front", f"127.0.0.1:{run.port}", f"127.0.0.1:{run.config['grpc_options']['port']}")
    return [front, *replica_endpoints().values()]
