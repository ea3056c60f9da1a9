"""Closed-loop HTTP load on a served app, for the reliability tests (a replica killed under it, a soak)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

# A request: (client, n) → "" when the answer is right, else what was wrong.
Send = Callable[[httpx.Client, int], str]


class ClosedLoop:
    """`clients` threads, each sending one request after the other on its own keep-alive
    httpx.Client until `stop()`.

    `send(http, n)` makes the n-th request of its thread and returns "" when the answer
    is right, else what was wrong; an httpx error counts as a failure too. Failures are
    kept with their monotonic time; `in_flight` is the number of requests sent and not
    yet answered.
    """

    def __init__(self, url: str, send: Send, clients: int = 16, timeout_s: float = 60.0) -> None:
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

    def while_held(self, action: Callable[[], object]) -> tuple[int, int]:
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
