"""Closed-loop HTTP clients choosing models by Zipf, recording every request (the placement benchmark).

wrk sends one request, or a Lua-chosen one, and keeps only aggregate latencies; the placement
benchmark needs each request's model, latency and whether it waited for its model's load (the
`serve-app-model-load-s` header) to split hits from misses. So: one asyncio process (uvloop),
`clients` keep-alive connections, each sending its next request as soon as the last answered.
Requests are pre-built bytes and responses are read with a minimal HTTP/1.1 parser, which keeps
the client's share of the machine's two cores small.

The models sent are one i.i.d. Zipf trace (`ZipfTrace`, seeded), taken in turn by whichever client
is free: every contender meets the same sequence of models.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from benchmarks.loadgen import Request

# The header serve_app (and benchmarks.baselines' multiplexed deployment) sets on the response of
# a request that waited for its model's load: the seconds it waited. Absent on hits.
LOAD_HEADER = b"serve-app-model-load-s"
# Set by benchmarks.baselines' multiplexed deployment: its replica and the loads it made so far.
REPLICA_HEADER = b"bench-replica"
LOADS_HEADER = b"bench-model-loads"


class ZipfTrace:
    """Models by Zipf's law (P(rank k) ∝ k^-s); ranks are given to `models` in a seeded random
    order, so that popularity is independent of the order (and size) of the names."""

    def __init__(self, models: list[str], s: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.by_rank = [models[i] for i in rng.permutation(len(models))]
        weights = np.arange(1, len(models) + 1, dtype=float) ** -s
        self._p = weights / weights.sum()
        self._rng = rng
        self._buffer: list[int] = []

    def next(self) -> str:
        if not self._buffer:
            self._buffer = self._rng.choice(len(self._p), size=4096, p=self._p).tolist()[::-1]
        return self.by_rank[self._buffer.pop()]


@dataclass(frozen=True)
class Record:
    """One request: when it started (monotonic s), its model, latency (s), HTTP status (0: no
    answer), the seconds it waited for its model's load (None: a hit), and what went wrong."""

    start: float
    model: str
    latency: float
    status: int
    load_s: float | None
    error: str = ""


@dataclass
class ClosedLoop:
    """`clients` connections to host:port sending `requests[model]` for models of `trace`."""

    host: str
    port: int
    requests: dict[str, Request]
    trace: ZipfTrace
    clients: int
    expect: bytes  # in every right answer's body
    timeout_s: float = 60.0
    records: list[Record] = field(default_factory=list)
    replica_loads: dict[str, int] = field(default_factory=dict)  # REPLICA_HEADER → last LOADS_HEADER
    _stop: asyncio.Event | None = None

    def _raw(self, request: Request) -> bytes:
        headers = {
            "Host": f"{self.host}:{self.port}",
            **request.headers,
            "Content-Length": str(len(request.body)),
        }
        head = f"POST {request.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return head.encode() + b"\r\n" + request.body

    async def run(self, phases: list[tuple[float, Callable[[], Awaitable[None]]]]) -> None:
        """Load until the phases are over: each is (seconds, what to do when it ends)."""
        self._stop = asyncio.Event()
        raw = {model: self._raw(request) for model, request in self.requests.items()}
        tasks = [asyncio.create_task(self._client(raw)) for _ in range(self.clients)]
        try:
            for seconds, then in phases:
                await asyncio.sleep(seconds)
                await then()
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)

    async def _client(self, raw: dict[str, bytes]) -> None:
        assert self._stop is not None
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not self._stop.is_set():
            model = self.trace.next()
            started = time.monotonic()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(self.host, self.port)
                status, headers, body = await asyncio.wait_for(
                    self._exchange(*connection, raw[model]), self.timeout_s
                )
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                self.records.append(Record(started, model, time.monotonic() - started, 0, None, repr(exc)))
                if connection is not None:
                    connection[1].close()
                connection = None
                await asyncio.sleep(0.1)  # a server that refuses: no busy loop
                continue
            latency = time.monotonic() - started
            waited = headers.get(LOAD_HEADER)
            error = "" if status == 200 and self.expect in body else body[:200].decode(errors="replace")
            self.records.append(
                Record(started, model, latency, status, float(waited) if waited else None, error)
            )
            if REPLICA_HEADER in headers:
                self.replica_loads[headers[REPLICA_HEADER].decode()] = int(headers[LOADS_HEADER])
            if headers.get(b"connection") == b"close":
                connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()
            with contextlib.suppress(OSError):
                await connection[1].wait_closed()

    @staticmethod
    async def _exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """One request on a keep-alive connection: (status, headers with lower-case names, body)."""
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            return status, headers, await reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            raise ValueError(f"a response without length: {head!r}")
        chunks = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # the empty trailer
        return status, headers, b"".join(chunks)


def run_closed_loop(loop: ClosedLoop, phases: list[tuple[float, Callable[[], Awaitable[None]]]]) -> None:
    """`loop.run(phases)` on uvloop (asyncio's own loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(loop.run(phases))
    else:
        uvloop.run(loop.run(phases))
