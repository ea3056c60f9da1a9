"""Starting and stopping real `serve run` processes against a test Ray cluster."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
APP_CONFIG = ROOT / "configs" / "app.yaml"
SERVE = str(Path(sys.executable).with_name("serve"))
# The runtimes `served` and the other per-module apps are parametrised by: triton where the
# in-process build is installed (`python -m serve_app.triton_install install`; CI installs it).
RUNTIMES = ["torch", *(["triton"] if importlib.util.find_spec("tritonserver") else [])]
# Max abs difference between served outputs and the TorchScript file run directly.
TOLERANCE = 1e-5


def app_config(
    port: int, args: dict[str, Any] | None = None, deployment: dict[str, Any] | None = None
) -> dict[str, Any]:
    """configs/app.yaml with its HTTP port, app args and deployment options overridden."""
    config = copy.deepcopy(yaml.safe_load(APP_CONFIG.read_text()))
    config["http_options"]["port"] = port
    free_request_path_ports(config)
    app = config["applications"][0]
    app["args"].update(args or {})
    app["deployments"][0].update(deployment or {})
    return config


def free_request_path_ports(config: dict[str, Any]) -> None:
    """Move HAProxy's stats and metrics listeners, the fallback proxy and gRPC to free ports.

    The shipped configs leave them at fixed defaults (8404, 9101, 8500 and 9500; gRPC 8001);
    a test run must not depend on those being free.
    """
    env_vars = config["controller_options"]["runtime_env"]["env_vars"]
    fallback_ports = ("FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT")
    for name in ("HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT", *fallback_ports):
        env_vars[f"RAY_SERVE_{name}"] = str(free_port())
    if "grpc_options" in config:
        config["grpc_options"]["port"] = free_port()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# A process by (pid, start time in clock ticks since boot): a reused pid is another process.
Process = tuple[int, int]


def infer_json(url: str, model: str, rows: np.ndarray) -> np.ndarray:
    """One FP32 `input__0` → first output, over plain JSON (no tritonclient in the way)."""
    body = json.dumps(
        {"inputs": [{"name": "input__0", "shape": list(rows.shape), "datatype": "FP32",
                     "data": rows.ravel().tolist()}]}
    ).encode()  # fmt: skip
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        output = json.loads(response.read())["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def session_processes(sid: int) -> list[int]:
    """PIDs of the live processes in session `sid`."""
    return [pid for pid, (_, _, session, _) in _process_table().items() if session == sid]


def _process_table() -> dict[int, tuple[int, int, int, int]]:
    """pid → (ppid, pgid, session, start time) of every live, non-zombie process (from /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # After the parenthesised command name: state, ppid, pgid, ..., starttime (field 22).
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    return table


def descendants(pid: int) -> set[Process]:
    """Live processes below `pid` (children, grandchildren, ...)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for child, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(child)
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {(p, table[p][3]) for p in found}


def alive(processes: set[Process]) -> set[Process]:
    """The subset of `processes` still running (zombies count as gone)."""
    table = _process_table()
    return {(pid, start) for pid, start in processes if pid in table and table[pid][3] == start}


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes_mentioning(text: str) -> set[Process]:
    """Live processes whose command line contains `text` (e.g. a private Ray temp dir)."""
    found = set()
    for pid, (_, _, _, start) in _process_table().items():
        if text in command_line(pid) and pid != os.getpid():
            found.add((pid, start))
    return found


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
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=self._env(),
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited early:\n{self.log()}")
            try:
                if http_get(self.url + "/v2/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"serve run not ready after {timeout_s} s:\n{self.log()}")

    def wait_log(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """Wait until the log matches `pattern` (a regex); returns the match."""
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.full_log())
            if match:
                return match
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the serve run log:\n{self.log()}")
            time.sleep(0.5)

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
        started = time.monotonic()
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout_s)
            self.exited_on_sigint = was_running
            self.survivors = alive(self.seen_processes)
            self.survivor_commands = [command_line(pid)[:120] for pid, _ in sorted(self.survivors)]
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        elapsed = time.monotonic() - started
        # Ray's dashboard helpers outlive `serve run` in its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.stop_s = elapsed
        if self.address and not self.exited_on_sigint:
            self._shutdown_serve()
        return elapsed

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


def run_torchscript(repository: Path, model: str, *inputs: Any, version: int = 1) -> tuple[Any, ...]:
    """The reference: `<repository>/<model>/<version>/model.pt` run directly in torch.

    Inputs are numpy arrays in forward()'s argument order; outputs come back as numpy.
    """
    import torch

    module = torch.jit.load(str(repository / model / str(version) / "model.pt")).eval()
    with torch.inference_mode():
        result = module(*[torch.from_numpy(np.array(a)) for a in inputs])
    if isinstance(result, torch.Tensor):
        result = (result,)
    return tuple(r.numpy() for r in result)


# --- checks shared by the e2e modules ---------------------------------------------------


def assert_matches(actual: np.ndarray | None, expected: np.ndarray) -> None:
    """Same shape and dtype as the TorchScript reference; values within TOLERANCE."""
    assert actual is not None, "output missing from the response"
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if expected.dtype == np.bool_:
        np.testing.assert_array_equal(actual, expected)
    else:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        assert diff.max(initial=0.0) <= TOLERANCE, f"max abs diff {diff.max()}"


def runtime_of(run: ServeRun) -> str:
    return run.config["applications"][0]["args"]["runtime"]


def repository_of(run: ServeRun) -> Path:
    """The repository the app serves (a relative one is relative to where `serve run` runs)."""
    if run.local_copy is not None:
        return run.local_copy
    return run.workdir / run.config["applications"][0]["args"]["model_repository"]


def linear_body(batch: int = 2) -> tuple[dict[str, Any], np.ndarray]:
    data = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) / 10
    body = {
        "inputs": [
            {"name": "input__0", "datatype": "FP32", "shape": [batch, 16], "data": data.ravel().tolist()}
        ]
    }
    return body, data


def assert_still_serving(http: httpx.Client, repository: Path) -> None:
    """A good request after a bad one: the replica is alive and still right."""
    body, data = linear_body()
    response = http.post("/v2/models/linear/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    (expected,) = run_torchscript(repository, "linear", data)
    assert_matches(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]), expected)


def assert_error(response: httpx.Response, status: int) -> str:
    """`status` with Triton's `{"error": "<message>"}` JSON body; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


# --- replica processes, memory and listening sockets (reliability tier) ---------------


def replica_processes(root: int, app: str = "triton", deployment: str = "InferenceServer") -> set[Process]:
    """Live Serve replica workers of `app`'s `deployment` below `root` (the driver that
    started the Ray cluster: pytest for the session cluster, else `serve run`)."""
    title = f"ray::ServeReplica:{app}:{deployment}"
    return {(pid, start) for pid, start in descendants(root) if command_line(pid).startswith(title)}


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS from /proc), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# A TCP listener: (address, port, pid of a process holding it, or 0 when none is visible).
Listener = tuple[str, int, int]


def tcp_listeners(pids: set[int] | None = None) -> list[Listener]:
    """Listening TCP sockets from /proc/net/tcp and tcp6, with a process holding each;
    only those held by `pids` when given. IPv6 addresses are printed compressed
    (`::` is every interface, `::ffff:127.0.0.1` loopback)."""
    import ipaddress

    owners = _socket_owners()
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            # /proc prints each 32-bit word in host (little-endian) byte order.
            raw = bytes.fromhex(address)
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            pid = owners.get(int(fields[9]), 0)
            if pids is None or pid in pids:
                found.append((str(ipaddress.ip_address(packed)), int(port, 16), pid))
    return sorted(found)


def _socket_owners() -> dict[int, int]:
    """socket inode → a pid holding it (from /proc/<pid>/fd)."""
    owners = {}
    for pid in _process_table():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), pid)
    return owners


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped loopback address."""
    import ipaddress

    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def replica_states(app: str = "triton", deployment: str = "InferenceServer") -> dict[str, int]:
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


def wait_for(predicate: Any, timeout_s: float, what: str, period_s: float = 0.25) -> float:
    """Poll `predicate()` until it is true; returns the monotonic time it first was."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(period_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


class ClosedLoop:
    """`clients` threads, each sending one request after the other on its own keep-alive
    httpx.Client until `stop()`.

    `send(http, n)` makes the n-th request of its thread and returns "" when the answer
    is right, else what was wrong; an httpx error counts as a failure too. Failures are
    kept with their monotonic time; `in_flight` is the number of requests sent and not
    yet answered.
    """

    def __init__(self, url: str, send: Any, clients: int = 16, timeout_s: float = 60.0) -> None:
        import threading

        self.url = url
        self.send = send
        self.clients = clients
        self.timeout_s = timeout_s
        self.ok = 0
        self.in_flight = 0
        self.failures: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> ClosedLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending; requests in flight still complete and count."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 10)

    def counts(self) -> tuple[int, int]:
        """(ok, failed) so far."""
        with self._lock:
            return self.ok, len(self.failures)

    def while_held(self, action: Any) -> tuple[int, int]:
        """Run `action()` while no request starts or ends; returns (in flight, ok) at that instant."""
        with self._lock:
            action()
            return self.in_flight, self.ok

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as http:
            n = 0
            while not self._stop.is_set():
                with self._lock:
                    self.in_flight += 1
                try:
                    error = self.send(http, n)
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.in_flight -= 1
                    if error:
                        self.failures.append((time.monotonic(), error))
                    else:
                        self.ok += 1
                n += 1


def free_grpc_ports(config: dict[str, Any]) -> None:
    """Free ports for the Serve gRPC port and the fallback proxy's gRPC port, when the
    config serves gRPC (the shipped configs use fixed ones: 8001, Ray's 9500)."""
    if config.get("grpc_options"):
        config["grpc_options"]["port"] = free_port()
        env_vars = config["controller_options"]["runtime_env"]["env_vars"]
        env_vars["RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"] = str(free_port())
