"""The residency package's plain types: a replica's budget, a resident model, what the cache did."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from serve_app.runtimes.base import LoadParameters


@dataclass(frozen=True)
class Budget:
    """How much one replica holds (None: no bound); `idle_unload_s`: unload models idle this long."""

    max_models: int | None = None
    memory_bytes: int | None = None
    idle_unload_s: float | None = None


@dataclass
class Resident:
    """A loaded model: what it costs, what it is worth keeping, and its requests in flight."""

    size_bytes: int
    load_s: float
    priority: float
    admitted: bool  # False: in the spare room, dropped once idle
    in_flight: int = 0
    last_used: float = 0.0


@dataclass
class Counters:
    """What the cache did since the replica started, for metrics and GET /v2."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_seconds: list[float] = field(default_factory=list)  # taken by the metrics exporter
    unloads: dict[str, int] = field(default_factory=lambda: {"idle": 0, "evicted": 0, "failed": 0})


# Size of a model before it is loaded (bytes of its files), and the memory the replica uses now.
SizeEstimate = Callable[[str], int]
MemoryUsed = Callable[[], int]
# A model's load parameters (its deployment's `config` override); raises when the model may not
# be served now (unknown, or unloaded for the deployment).
Admission = Callable[[str], LoadParameters]
