"""A separate autoscaling Ray cluster on this machine, built on Ray's fake multi-node provider.

`ray start --head --block --autoscaling-config=<json>` with RAY_FAKE_CLUSTER=1 runs
the real autoscaler (monitor.py); its `fake_multinode` provider "launches" a worker
node by starting another raylet on this machine with the node type's resources, and
"terminates" it by killing that raylet. So the whole loop (pending GPU demand →
node added → replicas placed → idle → node removed) runs on a CPU-only machine.

The cluster shares nothing with the session cluster of conftest: its own GCS port,
client/agent ports, and temp dir. Every process it starts lives in the session of
the `ray start --block` process (started with start_new_session; Ray spawns its
daemons without setsid), so `stop()` kills exactly that session, by PID.

`NodeWatcher` is a separate driver process that prints the cluster's alive nodes and
Serve's status as JSON lines: the pytest process may already be connected to the
session cluster, and one process can only be connected to one Ray cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from devtools.processes import free_port, session_processes, start_process
from tests.e2e.serve_run import ROOT

RAY = str(Path(sys.executable).with_name("ray"))

HEAD_NODE_TYPE = "ray.head.default"
GPU_NODE_TYPE = "ray.worker.gpu"


def autoscaling_config(
    gcs_address: str, head_cpus: int, max_workers: int, idle_timeout_minutes: float
) -> dict[str, Any]:
    """The autoscaler config: a head without GPUs and a {CPU: 1, GPU: 1} worker type."""
    return {
        "cluster_name": "serve-app-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # Without it, fake workers dial <node ip>:6379 (someone else's Ray, or nothing).
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            HEAD_NODE_TYPE: {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            GPU_NODE_TYPE: {
                "resources": {"CPU": 1, "GPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "head_node_type": HEAD_NODE_TYPE,
        "docker": {},
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeAutoscalingCluster:
    """Head (no GPU) + autoscaled {CPU: 1, GPU: 1} workers; stop() kills exactly what it started."""

    def __init__(
        self, workdir: Path, head_cpus: int = 1, max_workers: int = 2, idle_timeout_minutes: float = 0.25
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = autoscaling_config(self.address, head_cpus, max_workers, idle_timeout_minutes)
        self.head_cpus = head_cpus
        self.config_path = workdir / "autoscaling.json"
        self.log_path = workdir / "ray-head.log"
        # Unix socket paths are limited to ~107 bytes: keep the temp dir short.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayfake-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.process: subprocess.Popen | None = None
        self.leftover: list[int] = []

    def client_env(self) -> dict[str, str]:
        """What a process connecting to this cluster needs in its environment."""
        return {
            # Token auth with this cluster's own token (independent of ~/.ray/auth_token and of
            # the session cluster): an explicit --address never turns token auth on by itself.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            # Ray maps 127.0.0.1 to the eth0 address unless multi-node is "disabled": keeps every
            # node (fake workers included) and every driver on loopback.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.client_env(),
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        }

    def start(self, timeout_s: float = 120.0) -> FakeAutoscalingCluster:
        self.config_path.write_text(json.dumps(self.config, indent=2))
        command = [
            RAY, "start", "--head", "--block",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.head_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--autoscaling-config={self.config_path}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]  # fmt: skip
        self.process = start_process(
            command,
            self.log_path,
            lambda: b"Ray runtime started" in self.log_path.read_bytes(),
            "ray start",
            timeout_s,
            cwd=self.workdir,
            env=self.env(),
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def autoscaler_log(self) -> str:
        logs = sorted(self.temp_dir.glob("session_*/logs/monitor.*"))
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in logs if p.suffix in (".log", ".out"))

    def stop(self, timeout_s: float = 30.0) -> list[int]:
        """SIGTERM `ray start --block` (it stops its daemons), then SIGKILL whatever is left
        in its session. Returns the PIDs that had to be killed after the grace period."""
        if self.process is None:
            return []
        sid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout_s)
        deadline = time.monotonic() + 10
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.leftover = session_processes(sid)
        for pid in self.leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        deadline = time.monotonic() + 10
        while session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return self.leftover

    def __enter__(self) -> FakeAutoscalingCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_WATCHER = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray import serve

    ray.init(address=sys.argv[1], namespace="serve_app_watch", log_to_driver=False)
    while True:
        nodes = [
            {"id": n["NodeID"], "ip": n["NodeManagerAddress"], "resources": n["Resources"]}
            for n in ray.nodes() if n["Alive"]
        ]
        try:
            apps = {
                name: {
                    "status": str(app.status.value),
                    "replicas": {
                        d: dict(s.replica_states) for d, s in app.deployments.items()
                    },
                }
                for name, app in serve.status().applications.items()
            }
        except Exception as exc:
            apps = {"error": repr(exc)}
        print(json.dumps({"t": time.time(), "nodes": nodes, "apps": apps}), flush=True)
        time.sleep(0.5)
    """
)


class NodeWatcher:
    """A driver process connected to the fake cluster, sampling nodes and Serve status."""

    def __init__(self, address: str, workdir: Path, env: dict[str, str]) -> None:
        self.address = address
        self.env = env
        self.path = workdir / "watch.jsonl"
        self.process: subprocess.Popen | None = None

    def start(self) -> NodeWatcher:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WATCHER, self.address],
            cwd=ROOT,
            stdout=self.path.open("wb"),
            stderr=(self.path.with_suffix(".err")).open("wb"),
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        return self

    def samples(self) -> list[dict[str, Any]]:
        rows = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def latest(self) -> dict[str, Any] | None:
        rows = self.samples()
        return rows[-1] if rows else None

    def wait_for(self, predicate: Any, timeout_s: float, what: str) -> dict[str, Any]:
        """Wait for a fresh sample satisfying `predicate`; returns it."""
        started = time.time()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("node watcher exited")
            sample = self.latest()
            if sample is not None and sample["t"] >= started and predicate(sample):
                return sample
            time.sleep(0.5)
        raise TimeoutError(f"{what} not seen within {timeout_s} s; last sample: {self.latest()}")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def gpu_workers(sample: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in sample["nodes"] if n["resources"].get("GPU", 0) > 0]
