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

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


def port_free(port: int) -> bool:
    """Bindable the way servers bind (SO_REUSEADDR): wrk's TIME_WAIT sockets don't count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_block(low: int, high: int, size: int) -> int:
    """First port of `size` consecutive free ports inside [low, high)."""
    starts = list(range(low, high - size, size))
    random.shuffle(starts)
    for start in starts:
        if all(port_free(p) for p in range(start, start + size)):
            return start
    raise RuntimeError(f"no {size} free consecutive ports in {low}-{high}")


def isolation_env(tmp: Path, block: int = 16) -> dict[str, str]:
    """Per-run ports and paths for every fixed default a Serve mode would take."""
    # The upper half: other Serve instances on the machine allocate upward from 30000 and 40000.
    http = free_block(30500, 31000, block)
    grpc = free_block(40500, 41000, block)
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


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


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


# --- the process tree, from /proc (no psutil in the venv) -------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every visible process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        table[int(entry)] = (ppid, cmd.strip())
    return table


def descendants(root: int) -> dict[int, str]:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found[child] = table[child][1]
            stack.append(child)
    return found


def listening_ports(pids: Iterable[int]) -> set[int]:
    """TCP ports in LISTEN state whose socket is open in one of `pids` (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def mentioning(text: str) -> dict[int, str]:
    """Processes whose command line contains `text` (e.g. this run's workdir: HAProxy's -f path)."""
    return {pid: cmd for pid, (_, cmd) in _proc_table().items() if text in cmd and pid != os.getpid()}


def alive(pid: int, cmd: str) -> bool:
    """The pid still runs the same command (not reused, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z" and now.strip() == cmd


@dataclass
class StopReport:
    seconds: float  # SIGINT → `serve run` exited
    graceful: bool  # exited before the SIGKILL
    leftovers: list[str] = field(default_factory=list)  # processes of its tree alive 10 s after
    haproxy_seen: int = 0  # haproxy processes in the tree before the stop
    haproxy_left: int = 0


def _take_ctrl_c() -> None:
    """In the child before exec: SIGINT back to its default. A benchmark started in the background
    (`... &` from a script) ignores SIGINT and its children inherit that, so `serve run` would
    ignore the stop's Ctrl-C and every stop would run into its timeout (seen: 90 s, not graceful)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
        self.env = {**os.environ, **isolation_env(workdir), **mode.env, **(extra_env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.process: subprocess.Popen | None = None
        self.ready_after_s = float("nan")

    def start(self, timeout_s: float = 180.0) -> ServeProcess:
        path = self.workdir / f"app-{self.mode.name}-{self.port}.yaml"
        # The mode's environment alone picks the request path, not the config's controller_options.
        config = {k: v for k, v in self.config.items() if k != "controller_options"}
        path.write_text(yaml.safe_dump(config))
        started = time.monotonic()
        self.process = subprocess.Popen(
            [SERVE, "run", str(path)],
            cwd=self.workdir,
            env=self.env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_take_ctrl_c,
        )
        try:
            self._wait(lambda: self._answers(self.proxy_url), timeout_s, started)
            self.ready_after_s = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self, base: str, path: str | None = None) -> bool:
        with contextlib.suppress(OSError):
            return http_get(base + (path or self.probe_path), timeout=2)[0] == 200
        return False

    def _wait(self, ready: Any, timeout_s: float, started: float) -> Any:
        while time.monotonic() - started < timeout_s:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited early:\n{self.log()}")
            found = ready()
            if found:
                return found
            time.sleep(0.25)
        raise TimeoutError(f"serve run not ready after {timeout_s} s:\n{self.log()}")

    def url_for(self, probe_path: str, timeout_s: float = 120.0) -> str:
        """Where HTTP clients of the app answering `probe_path` connect in this mode (waits for it)."""
        port = self._port_for(
            "HTTP", self.port, lambda p: self._answers(f"http://127.0.0.1:{p}", probe_path), timeout_s
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

    def _port_for(self, kind: str, serve_port: int, answers: Callable[[int], bool], timeout_s: float) -> int:
        """The Serve port (HTTP or gRPC) in proxy modes, else the first replica port of `kind` answering."""
        started = time.monotonic()
        if self.mode.target == "replica":
            return self._wait(lambda: self.replica_ports(kind, answers), timeout_s, started)[0]
        self._wait(lambda: answers(serve_port), timeout_s, started)
        return serve_port

    def replica_ports(self, kind: str, answers: Callable[[int], bool]) -> list[int]:
        """Direct-ingress ports (`kind` HTTP or GRPC) of this run's replicas for which `answers` holds.

        Only ports a process of this `serve run`'s tree listens on: another Serve instance on
        the machine (default ranges 30000-31000, 40000-41000) may answer the same probe nearby.
        """
        if self.process is None:
            return []
        low = int(self.env[f"RAY_SERVE_DIRECT_INGRESS_MIN_{kind}_PORT"])
        high = int(self.env[f"RAY_SERVE_DIRECT_INGRESS_MAX_{kind}_PORT"])
        ours = listening_ports(descendants(self.process.pid))
        return [p for p in sorted(ours) if low <= p < high and answers(p)]

    def gcs_address(self) -> str | None:
        """The GCS address of the Ray node `serve run` started (from its raylet's command line)."""
        if self.process is None:
            return None
        for cmd in descendants(self.process.pid).values():
            if "/raylet/raylet " in cmd:
                for arg in cmd.split():
                    if arg.startswith("--gcs-address="):
                        return arg.split("=", 1)[1]
        return None

    def session_dir(self) -> Path | None:
        """The Ray session directory of the node `serve run` started."""
        if self.process is None:
            return None
        for cmd in descendants(self.process.pid).values():
            if "/raylet/raylet " in cmd:
                for arg in cmd.split():
                    if arg.startswith("--session_dir="):
                        return Path(arg.split("=", 1)[1])
        return None

    def replica_counts(self) -> dict[str, int]:
        """Live replica processes per `app:deployment` (process titles `ray::ServeReplica:app:dep`)."""
        counts: dict[str, int] = {}
        if self.process is None:
            return counts
        for cmd in descendants(self.process.pid).values():
            if cmd.startswith("ray::ServeReplica:"):
                # The title gains `.method` while a call runs: ray::ServeReplica:app:Dep.handle_request
                key = cmd.split()[0].removeprefix("ray::ServeReplica:").split(".")[0]
                counts[key] = counts.get(key, 0) + 1
        return counts

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
        if self.process is None:
            return {}
        return {p: c for p, c in descendants(self.process.pid).items() if "haproxy" in c.split(" ")[0]}

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self, timeout_s: float = 90.0) -> StopReport:
        """SIGINT (Ctrl-C) to the group, wait; SIGKILL the group; report what outlived it."""
        if self.process is None:
            return StopReport(0.0, True)
        tree = descendants(self.process.pid)
        haproxy = {p: c for p, c in tree.items() if "haproxy" in c.split(" ")[0]}
        started = time.monotonic()
        graceful = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            graceful = False
        elapsed = time.monotonic() - started
        # Ray's dashboard helpers and the node's daemons share `serve run`'s group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 10
        left = tree
        while time.monotonic() < deadline:
            # Its tree as seen before the stop, plus anything started since that names our workdir
            # (an HAProxy reload spawns a new haproxy with -f <workdir>/haproxy/...).
            left = {p: c for p, c in {**tree, **mentioning(str(self.workdir))}.items() if alive(p, c)}
            if not left:
                break
            time.sleep(0.5)
        report = StopReport(
            seconds=elapsed,
            graceful=graceful,
            leftovers=[f"{p} {c[:120]}" for p, c in left.items()],
            haproxy_seen=len(haproxy),
            haproxy_left=sum(1 for c in left.values() if "haproxy" in c.split(" ")[0]),
        )
        for pid in left:  # ours: started by this `serve run`; end them by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process = None
        return report

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_workdir(prefix: str) -> Path:
    # Short: HAProxy's unix socket paths (dir/<node id>/admin.sock) must stay under 108 bytes.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
