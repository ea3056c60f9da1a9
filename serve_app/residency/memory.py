"""How much memory a replica's models take: measured at each load, estimated from the files before.

On GPU replicas the measure is the GPU's memory in use (NVML), on CPU replicas the process's
resident set; a model's files are the estimate that decides, before it loads, whether it fits.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath

from serve_app.gpu_metrics import GpuReader
from serve_app.storage import RepositoryURL, filesystem

logger = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def process_rss() -> int:
    """This process's resident set in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(_libc(), "malloc_trim", None)  # glibc only


# mallopt's M_MMAP_THRESHOLD, and the size from which allocations get their own mapping (glibc's
# default starts at 128 KiB and rises to the largest block freed, up to 32 MiB).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 4 * 2**20


def map_large_blocks() -> None:
    """Give every block of `MMAP_THRESHOLD_BYTES` or more its own mapping, returned to the system
    when freed, whatever was freed before (glibc only).

    glibc raises its threshold to the largest mapped block freed: once a model's tensors were
    freed, the next model's (tens of MiB) went to the heaps of the threads that loaded them, which
    trimming cannot shrink past the blocks still in use above them; a CPU replica's resident set
    then grew by gigabytes while models came and went (torch runtime, placement benchmark)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing).

    An unloaded model's tensors go back to glibc's heap, which keeps large freed blocks once its
    mmap threshold has risen past them: without this, a CPU replica's resident set stays at its
    highest and grows with each load and eviction, well past what its models hold."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class LoadMeter:
    """What a load adds to the memory in use, where that can be told: measured alone (no other load
    beside it, whose memory would count as its own), with freed memory given back before and after
    (else the buffers its files were read into would count, which the C heap keeps)."""

    def __init__(self, memory_used: Callable[[], int], release: Callable[[], None]) -> None:
        self._memory_used = memory_used
        self._release = release
        self._loads = 0

    async def load(self, alone: bool, load: Awaitable[None]) -> int:
        """Await `load`; the bytes it added, or 0 when `alone` is false or another load ran beside it."""
        before = await self.in_use() if alone else 0
        self._loads += 1
        number = self._loads
        await load
        return await self.in_use() - before if alone and self._loads == number else 0

    async def in_use(self) -> int:
        """Memory in use now, freed memory given back first."""

        def measure() -> int:
            self._release()
            return self._memory_used()

        return await asyncio.to_thread(measure)

    async def give_back(self) -> None:
        """Freed memory back to the system (after an unload)."""
        await asyncio.to_thread(self._release)


def memory_meter(gpu_ids: tuple[str, ...]) -> Callable[[], int]:
    """Memory in use where this replica's models live: its GPUs, else this process."""
    reader = GpuReader.open(gpu_ids) if gpu_ids else None
    return reader.memory_used if reader is not None else process_rss


def size_estimator(repository: Path | RepositoryURL) -> Callable[[str], int]:
    """Bytes of a model's files (names starting with "." left out), locally or on object storage."""
    if isinstance(repository, RepositoryURL):
        return functools.partial(_store_size, repository)
    return functools.partial(_local_size, repository)


def _local_size(repository: Path, model: str) -> int:
    root = repository / model
    return sum(
        path.stat().st_size
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def _store_size(location: RepositoryURL, model: str) -> int:
    try:
        objects = filesystem(location).find(f"{location.root}/{model}", detail=True)
    except Exception as exc:  # noqa: BLE001 - no estimate: the measured size decides after the load
        logger.warning("no size estimate for model '%s': %s", model, exc)
        return 0
    return sum(
        int(info.get("size") or 0)
        for name, info in objects.items()
        if not PurePosixPath(name).name.startswith(".")
    )
