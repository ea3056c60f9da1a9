"""The shipped Serve configs, made to run beside others on one machine (tests and benchmarks)."""

from __future__ import annotations

import argparse
import contextlib
import copy
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from devtools.processes import command_line, descendants, free_port, interrupt_group, spawn, tcp_listeners

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Ray's direct-ingress servers of each replica: HTTP and gRPC (the ports HAProxy forwards to).
REPLICA_HTTP_PORTS, REPLICA_GRPC_PORTS = range(30000, 31000), range(40000, 41000)


@cache
def _shipped(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text())


def shipped(name: str = "app.yaml", port: int | None = None) -> dict[str, Any]:
    """configs/<name> with its HTTP port (`port`, else a free one) and every other fixed port free."""
    config = copy.deepcopy(_shipped(name))
    config["http_options"]["port"] = port or free_port()
    free_request_path_ports(config)
    return config


def free_request_path_ports(config: dict[str, Any]) -> None:
    """Move HAProxy's stats and metrics listeners, the fallback proxy and gRPC to free ports.

    The shipped configs leave them at fixed defaults (8404, 9101, 8500 and 9500; gRPC 8001);
    a test or benchmark run must not depend on those being free.
    """
    env_vars = config["controller_options"]["runtime_env"]["env_vars"]
    fallback_ports = ("FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT")
    for name in ("HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT", *fallback_ports):
        env_vars[f"RAY_SERVE_{name}"] = str(free_port())
    if "grpc_options" in config:
        config["grpc_options"]["port"] = free_port()


def replica_pids(root: int, title: str = "ray::ServeReplica") -> set[int]:
    """Serve replica processes below `root` (a `serve run`, or the driver of a test cluster)."""
    return {pid for pid, _ in descendants(root) if command_line(pid).startswith(title)}


def replica_http_ports(root: int) -> list[int]:
    """The direct-ingress HTTP port of each replica below `root`."""
    return sorted({port for _, port, _ in tcp_listeners(replica_pids(root)) if port in REPLICA_HTTP_PORTS})


@contextlib.contextmanager
def serving(config: dict[str, Any], workdir: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`serve run` of `config` (starting its own Ray, as a user's does) until the block ends, then
    Ctrl-C; yields the process and the app's URL. Its output goes to `workdir`/serve.log."""
    path = workdir / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = str(Path(sys.executable).with_name("serve"))
    process = spawn([serve, "run", str(path)], workdir / "serve.log", cwd=workdir)
    try:
        yield process, f"http://127.0.0.1:{config['http_options']['port']}"
    finally:
        interrupt_group(process, 60)


def examples_workdir(prefix: str) -> tuple[Path, Path]:
    """A new work directory with the example repository in it: (workdir, repository)."""
    from serve_app.examples import build_example_repository  # imports torch: only where it is used

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    build_example_repository(workdir / "repository")
    return workdir, workdir / "repository"


def runtime_arguments(description: str, rounds: int) -> argparse.Namespace:
    """`--runtime` (triton or torch) and `--rounds` of a benchmark of one app."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runtime", default="triton", choices=["triton", "torch"])
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser.parse_args()
