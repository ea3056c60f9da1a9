"""Starting contenders as real processes, in the request-path modes of Ray 2.60.

`ServeProcess` runs `serve run <config>` in its own process group with a mode's
environment (the variables are read by the controller, proxy and replica
processes, which inherit them from the Ray node that `serve run` starts), waits
until a probe answers 200, and on stop sends SIGINT like Ctrl-C, then SIGKILL to
the group, and reports any process of its tree that outlived `serve run` (Ray
workers have their own process groups; HAProxy is a child of the proxy actor).

The config's `controller_options` (configs/app.yaml's request path) is dropped: the
mode's environment alone decides. Every port Ray Serve would otherwise take from a
fixed default (direct-ingress ranges, fallback proxy, HAProxy metrics/stats) and
HAProxy's /tmp paths are moved to free, per-run values so several runs (and other
users of the machine) never collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools.processes import (
    Process,
    answers,
    command_line,
    descendants,
    free_block,
    free_port,
    interrupt_group,
    kill,
    spawn,
    tcp_listeners,
    wait_gone,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[1]
SERVE = str(Path(sys.executable).with_name("serve"))


@dataclass(frozen=True)
class Mode:
    """A request path: environment for `serve run` and where clients connect."""

    name: str
    env: dict[str, str]
    target: str  # "proxy": the Serve HTTP port; "replica": the replica's direct-ingress port
    description: str


# The request path configs/app.yaml ships (its controller_options env_vars): the "haproxy" mode.
_SHIPPED = yaml.safe_load((ROOT / "configs" / "app.yaml").read_text())
SHIPPED_ENV: dict[str, str] = _SHIPPED["controller_options"]["runtime_env"]["env_vars"]
# How long a stopping direct-ingress replica keeps serving, as shipped (Ray's default is 30 s).
DRAINING = {k: v for k, v in SHIPPED_ENV.items() if k == "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"}

MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("stock", {}, "proxy", "Ray 2.60 defaults: Python proxy → replica (actor call)"),
        Mode(
            "stock-quiet",
            {"RAY_SERVE_LOG_TO_STDERR": "0", "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000"},
            "proxy",
            "stock proxy, request logs buffered and kept off stderr (not streamed to `serve run`)",
        ),
        Mode(
            "throughput",
            {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **DRAINING},
            "replica",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED=1, client on the replica's direct-ingress port",
        ),
        Mode(
            "throughput-proxy",
            {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **DRAINING},
            "proxy",
            "RAY_SERVE_THROUGHPUT_OPTIMIZED=1, client on the Serve port (proxy → replica over gRPC)",
        ),
        Mode(
            "haproxy",
            SHIPPED_ENV,
            "proxy",
            "configs/app.yaml's: HAProxy (RAY_SERVE_ENABLE_HA_PROXY=1 + THROUGHPUT_OPTIMIZED=1)",
        ),
    )
}


def isolation_env(tmp: Path, block: int = 16) -> dict[str, str]:
    """Per-run ports and paths for every fixed default a Serve mode would take."""
    # Other Serve instances on the machine allocate upward from 30000 (HTTP) and 40000 (gRPC); both
    # blocks stay below the kernel's ephemeral range (32768-60999), where outgoing connections take
    # ports (a session's Ray holds enough of them to leave no free block in 40500-41000: seen in CI).
    http = free_block(30500, 31000, block)
    grpc = free_block(31000, 31500, block)
    hap = tmp / "haproxy"
    hap.mkdir(parents=True, exist_ok=True)
    return {
        # Direct ingress: replicas' own uvicorn (HTTP) and gRPC servers.
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + block),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + block),
        # The Python proxy HAProxy mode keeps as a backup (default 8500/9500).
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        # HAProxy's Prometheus listener (default *:9101) and stats page (default *:8404).
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        # HAProxy's files (default /tmp/haproxy-serve/...).
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hap / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hap / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hap / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(hap / "metrics.sock"),
    }


@dataclass(frozen=True)
class GrpcTarget:
    """Where gRPC clients connect, and the `application` metadata Ray Serve routes them by
    (its proxy, HAProxy and a replica's own gRPC server all read it; Triton ignores it)."""

    address: str  # host:port
    application: str | None = None

    @property
    def url(self) -> str:
        return f"grpc://{self.address}"

    @property
    def metadata(self) -> dict[str, str]:
        return {"application": self.application} if self.application else {}

    def client(self) -> Any:
        """A `tritonclient.grpc.InferenceServerClient` (imported here: only gRPC runs need grpcio)."""
        import tritonclient.grpc

        return tritonclient.grpc.InferenceServerClient(self.address)

    def ready(self, timeout: float = 2.0) -> bool:
        """ServerReady answers true (a replica of another application refuses the metadata)."""
        from tritonclient.utils import InferenceServerException

        client = self.client()
        try:
            return bool(client.is_server_ready(headers=self.metadata, client_timeout=timeout))
        except InferenceServerException:
            return False
        finally:
            client.close()


@dataclass
class StopReport:
    seconds: float  # SIGINT → the process exited (or the timeout)
    graceful: bool  # exited before the SIGKILL
    leftovers: list[str] = field(default_factory=list)  # processes of its tree alive 10 s after
    haproxy_seen: int = 0  # haproxy processes in the tree before the stop
    haproxy_left: int = 0


def is_haproxy(command: str) -> bool:
    return "haproxy" in command.split(" ")[0]


def leftovers(tree: set[Process], workdir: Path, timeout_s: float) -> tuple[set[Process], list[str], int]:
    """What still runs of `tree` (a stopped run's processes) after up to `timeout_s`, with anything
    started since that names `workdir` (an HAProxy reload spawns a new haproxy with -f
    <workdir>/haproxy/...): those processes, each as "pid command", and how many are haproxy."""
    left = wait_gone(tree, timeout_s, mentioning=str(workdir))
    commands = {pid: command_line(pid) for pid, _ in left}
    return left, [f"{pid} {c[:120]}" for pid, c in commands.items()], sum(map(is_haproxy, commands.values()))


class ServeProcess:
    """`serve run` of one config in one mode; a context manager."""

    def __init__(
        self,
        config: dict[str, Any],
        mode: Mode,
        workdir: Path,
        probe_path: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.mode = mode
        self.workdir = workdir
        self.port = config["http_options"]["port"]
        self.grpc_port: int | None = config.get("grpc_options", {}).get("port")
        self.proxy_url = f"http://127.0.0.1:{self.port}"
        self.probe_path = probe_path
        self.log_path = workdir / f"serve-{mode.name}-{self.port}.log"
        # Isolation last: a mode taken from a shipped config names that config's fixed HAProxy paths.
        self.env = {**os.environ, **mode.env, **isolation_env(workdir), **(extra_env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.process: subprocess.Popen | None = None
        self.ready_after_s = float("nan")

    def start(self, timeout_s: float = 180.0) -> ServeProcess:
        path = self.workdir / f"app-{self.mode.name}-{self.port}.yaml"
        # The mode's environment alone picks the request path, not the config's controller_options.
        config = {k: v for k, v in self.config.items() if k != "controller_options"}
        path.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        self.process = spawn([SERVE, "run", str(path)], self.log_path, cwd=self.workdir, env=self.env)
        try:
            self._wait(lambda: answers(self.proxy_url + self.probe_path), timeout_s)
            self.ready_after_s = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, ready: Callable[[], Any], timeout_s: float) -> Any:
        assert self.process is not None
        return wait_ready(self.process, ready, timeout_s, "serve run", self.log, period_s=0.25)

    def url_for(self, probe_path: str, timeout_s: float = 120.0) -> str:
        """Where HTTP clients of the app answering `probe_path` connect in this mode (waits for it)."""
        port = self._port_for(
            "HTTP", self.port, lambda p: answers(f"http://127.0.0.1:{p}{probe_path}"), timeout_s
        )
        return f"http://127.0.0.1:{port}"

    def grpc_target_for(self, application: str, timeout_s: float = 120.0) -> GrpcTarget:
        """Where gRPC clients of `application` connect in this mode (waits until its ServerReady answers)."""
        if self.grpc_port is None:
            raise RuntimeError("the config has no grpc_options: no gRPC ingress")
        port = self._port_for(
            "GRPC", self.grpc_port, lambda p: GrpcTarget(f"127.0.0.1:{p}", application).ready(), timeout_s
        )
        return GrpcTarget(f"127.0.0.1:{port}", application)

    def _port_for(
        self, kind: str, serve_port: int, answering: Callable[[int], bool], timeout_s: float
    ) -> int:
        """The Serve port (HTTP or gRPC) in proxy modes, else the first replica port of `kind` answering."""
        if self.mode.target == "replica":
            return self._wait(lambda: self.replica_ports(kind, answering), timeout_s)[0]
        self._wait(lambda: answering(serve_port), timeout_s)
        return serve_port

    def replica_ports(self, kind: str, answering: Callable[[int], bool]) -> list[int]:
        """Direct-ingress ports (`kind` HTTP or GRPC) of this run's replicas for which `answering` holds.

        Only ports a process of this `serve run`'s tree listens on: another Serve instance on
        the machine (default ranges 30000-31000, 40000-41000) may answer the same probe nearby.
        """
        if self.process is None:
            return []
        low = int(self.env[f"RAY_SERVE_DIRECT_INGRESS_MIN_{kind}_PORT"])
        high = int(self.env[f"RAY_SERVE_DIRECT_INGRESS_MAX_{kind}_PORT"])
        ours = {port for _, port, _ in tcp_listeners({pid for pid, _ in descendants(self.process.pid)})}
        return [p for p in sorted(ours) if low <= p < high and answering(p)]

    def _tree(self) -> dict[int, str]:
        """pid → command line of every process below `serve run`."""
        if self.process is None:
            return {}
        return {pid: command_line(pid) for pid, _ in descendants(self.process.pid)}

    def session_dir(self) -> Path | None:
        """The Ray session directory of the node `serve run` started (from its raylet's command line)."""
        for command in self._tree().values():
            if "/raylet/raylet " in command:
                for arg in command.split():
                    if arg.startswith("--session_dir="):
                        return Path(arg.split("=", 1)[1])
        return None

    def replica_counts(self) -> dict[str, int]:
        """Live replica processes per `app:deployment` (process titles `ray::ServeReplica:app:dep`)."""
        counts: dict[str, int] = {}
        for command in self._tree().values():
            if command.startswith("ray::ServeReplica:"):
                # The title gains `.method` while a call runs: ray::ServeReplica:app:Dep.handle_request
                key = command.split()[0].removeprefix("ray::ServeReplica:").split(".")[0]
                counts[key] = counts.get(key, 0) + 1
        return counts

    def replica_http_ports(self) -> dict[int, int | None]:
        """pid → the direct-ingress HTTP port of each live replica process (None where it has
        none: the stock request path)."""
        replicas = [pid for pid, command in self._tree().items() if command.startswith("ray::ServeReplica:")]
        low = int(self.env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
        high = int(self.env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
        ports: dict[int, int | None] = dict.fromkeys(replicas)
        for _, port, pid in tcp_listeners(set(replicas)):
            if low <= port < high:
                ports[pid] = port
        return ports

    def autoscaling_events(self) -> list[str]:
        """The controller's `Upscaling/Downscaling ... Current ongoing requests: N` log lines."""
        session = self.session_dir()
        if session is None:
            return []
        events = []
        for log_file in sorted((session / "logs" / "serve").glob("controller_*.log")):
            for line in log_file.read_text(errors="replace").splitlines():
                if "Upscaling" in line or "Downscaling" in line:
                    events.append(line.split(" -- ", 1)[-1][:240])
        return events

    def haproxy_pids(self) -> dict[int, str]:
        return {pid: command for pid, command in self._tree().items() if is_haproxy(command)}

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self, timeout_s: float = 90.0) -> StopReport:
        """SIGINT (Ctrl-C) to the group, wait; SIGKILL the group; report (and end) what outlived it."""
        if self.process is None:
            return StopReport(0.0, True)
        tree = descendants(self.process.pid)
        haproxy_seen = len(self.haproxy_pids())
        # Ray's dashboard helpers and the node's daemons share `serve run`'s group.
        seconds, graceful = interrupt_group(self.process, timeout_s)
        self.process = None
        left, described, haproxy_left = leftovers(tree, self.workdir, 10)
        kill(left)  # ours: started by this `serve run`
        return StopReport(seconds, graceful, described, haproxy_seen, haproxy_left)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_workdir(prefix: str) -> Path:
    # Short: HAProxy's unix socket paths (dir/<node id>/admin.sock) must stay under 108 bytes.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
