"""Processes, ports and HTTP probes for the tests and the benchmarks, read from /proc (no psutil).

A process is named by its pid and its start time (`Process`): the kernel hands a pid out again
once its process has ended, and the new holder is another process. The servers the tests and
benchmarks start run in a session (and process group) of their own with their output in a log
file; they are stopped through that group or by pid, never by name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

# A process by (pid, start time in clock ticks since boot): a reused pid is another process.
Process = tuple[int, int]
# A TCP listener: (address, port, pid of a process holding it, or 0 when none is visible).
Listener = tuple[str, int, int]


class Stat(NamedTuple):
    """What the helpers read of /proc/<pid>/stat."""

    ppid: int
    pgid: int
    session: int
    start: int  # clock ticks since boot


# --- the process table ---------------------------------------------------------------------------


def process_table() -> dict[int, Stat]:
    """pid → Stat of every live, non-zombie process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # After the parenthesised command name: state, ppid, pgid, session, ..., starttime (field 22).
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            table[int(entry)] = Stat(int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    return table


def command_line(pid: int) -> str:
    """`pid`'s command line, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(pid: int) -> set[Process]:
    """Live processes below `pid` (children, grandchildren, ...)."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for child, stat in table.items():
        children.setdefault(stat.ppid, []).append(child)
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {(p, table[p].start) for p in found}


def alive(processes: Iterable[Process]) -> set[Process]:
    """Those of `processes` still running (zombies count as gone, a reused pid as another process)."""
    table = process_table()
    return {(pid, start) for pid, start in processes if pid in table and table[pid].start == start}


def processes_mentioning(text: str) -> set[Process]:
    """Live processes whose command line contains `text` (e.g. a private Ray temp dir), but this one."""
    return {
        (pid, stat.start)
        for pid, stat in process_table().items()
        if pid != os.getpid() and text in command_line(pid)
    }


def session_processes(sid: int) -> list[int]:
    """PIDs of the live processes in session `sid`."""
    return [pid for pid, stat in process_table().items() if stat.session == sid]


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- sockets and ports ---------------------------------------------------------------------------


def tcp_listeners(pids: set[int] | None = None) -> list[Listener]:
    """Listening TCP sockets (/proc/net/tcp and tcp6) with a process holding each; only those
    held by `pids` when given. IPv6 addresses are printed compressed (`::` is every interface,
    `::ffff:127.0.0.1` loopback)."""
    owners = _socket_owners(process_table() if pids is None else pids)
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


def _socket_owners(pids: Iterable[int]) -> dict[int, int]:
    """socket inode → one of `pids` holding it (from /proc/<pid>/fd)."""
    owners: dict[int, int] = {}
    for pid in pids:
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
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


# Ports for the servers tests and benchmarks start: below the kernel's ephemeral range (32768-60999
# here), where the local end of an outgoing connection can take a port between its choice and the
# server's bind (seen: Serve's gRPC proxy failing to bind [::]:<port>), and above Ray's worker ports
# (to 19999).
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


def port_free(port: int) -> bool:
    """Bindable the way servers bind (SO_REUSEADDR): a load generator's TIME_WAIT sockets don't count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_block(low: int, high: int, size: int) -> int:
    """First port of `size` consecutive free ports inside [low, high), none handed out before."""
    starts = list(range(low, high - size, size))
    random.shuffle(starts)
    for start in starts:
        block = range(start, start + size)
        if _handed_out.isdisjoint(block) and all(port_free(p) for p in block):
            _handed_out.update(block)
            return start
    raise RuntimeError(f"no {size} free consecutive ports in {low}-{high}")


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections on `host:port`."""
    try:
        socket.create_connection((host, port), 0.5).close()
    except OSError:
        return False
    return True


# --- HTTP without a client library ---------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body); an error status is returned, not raised (OSError still is)."""
    return _fetch(urllib.request.Request(url), timeout)


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of a POST; an error status is returned, not raised (OSError still is)."""
    return _fetch(urllib.request.Request(url, data=body, headers=headers, method="POST"), timeout)


def _fetch(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def answers(url: str, timeout: float = 2.0) -> bool:
    """GET `url` answers 200 (a refused or timed-out connection is a no)."""
    with contextlib.suppress(OSError):
        return http_get(url, timeout)[0] == 200
    return False


# --- starting, waiting, stopping -----------------------------------------------------------------


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def spawn(command: Sequence[str], log_path: Path, **popen: Any) -> subprocess.Popen:
    """`command` in a session (and process group) of its own, stdout and stderr into `log_path`,
    and SIGINT at its default action: a parent started in the background (`... &` from a script)
    ignores SIGINT and its children inherit that, so the Ctrl-C of `interrupt_group` would go
    unheard and every such stop run into its timeout."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
            **popen,
        )


def _default_sigint() -> None:
    """Runs in the child between fork and exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_ready(
    process: subprocess.Popen,
    ready: Callable[[], T],
    timeout_s: float,
    what: str,
    log: Callable[[], str],
    period_s: float = 0.3,
) -> T:
    """Poll `ready()` until it returns something true, and return that. Raises with `log()` when
    `process` exits first (RuntimeError) or `timeout_s` passes (TimeoutError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early ({process.returncode}):\n{log()}")
        time.sleep(period_s)
    raise TimeoutError(f"{what} not ready after {timeout_s} s:\n{log()}")


def start_process(
    command: Sequence[str],
    log_path: Path,
    ready: Callable[[], object],
    what: str,
    timeout_s: float = 60.0,
    **popen: Any,
) -> subprocess.Popen:
    """`spawn` `command` and wait until `ready()`; stopped again, and raising with its log, if it
    exits or times out first."""
    process = spawn(command, log_path, **popen)
    try:
        wait_ready(process, ready, timeout_s, what, lambda: log_tail(log_path))
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def interrupt_group(
    process: subprocess.Popen, timeout_s: float, on_exit: Callable[[], None] | None = None
) -> tuple[float, bool]:
    """Ctrl-C as a terminal sends it: SIGINT to `process`'s group, up to `timeout_s` for `process`
    to exit, then SIGKILL to the group (helpers that outlive the leader in its group, such as
    Ray's dashboard processes) and reap it. `on_exit` runs between an exit in time and the
    SIGKILL, while what outlived `process` is still there to see.

    Returns (seconds from the SIGINT to the exit or the timeout, whether it exited in time).
    """
    started = time.monotonic()
    exited = True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        exited = False
    elapsed = time.monotonic() - started
    if exited and on_exit is not None:
        on_exit()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return elapsed, exited


def wait_gone(
    processes: set[Process], timeout_s: float, mentioning: str | None = None, period_s: float = 0.5
) -> set[Process]:
    """Wait until none of `processes` runs, nor any process whose command line contains
    `mentioning` (one started since, e.g. by an HAProxy reload); returns those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = alive(processes | (processes_mentioning(mentioning) if mentioning else set()))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(period_s)


def kill(processes: Iterable[Process]) -> None:
    """SIGKILL those of `processes` still running (by pid, once checked to be the same process)."""
    for pid, _ in alive(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(
    predicate: Callable[[], object], timeout_s: float, what: str | Callable[[], str], period_s: float = 0.25
) -> float:
    """Poll `predicate()` until it is true; returns the monotonic time it first was. The timeout's
    error names `what` (a callable: what it says then, e.g. the state last seen)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(period_s)
    raise TimeoutError(f"{what() if callable(what) else what}: not within {timeout_s} s")
