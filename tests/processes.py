"""Helper processes the tests start (Prometheus, a Ray head, an S3 server): one way to start them.

Each runs in a session of its own with its output in a log file, and is stopped by its PID.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def start_process(
    command: Sequence[str],
    log_path: Path,
    ready: Callable[[], bool],
    what: str,
    timeout_s: float = 60.0,
    **popen: Any,
) -> subprocess.Popen:
    """Start `command` and wait until `ready()`; raise with its log if it exits or times out first."""
    process = subprocess.Popen(
        list(command), stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, **popen
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log_tail(log_path)}")
        if ready():
            return process
        time.sleep(0.3)
    stop_process(process)
    raise TimeoutError(f"{what} not ready after {timeout_s} s:\n{log_tail(log_path)}")


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# Ports for the servers tests start: below the kernel's ephemeral range (32768-60999 here), where
# the local end of an outgoing connection can take a port between its choice and the server's bind
# (seen: Serve's gRPC proxy failing to bind [::]:<port>), and above Ray's worker ports (to 19999).
_PORTS = range(20000, 30000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on every interface now, never handed out before by this process."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS}")
