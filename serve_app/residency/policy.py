"""Which models a replica keeps when it has no room: frequency, recency and size, not recency alone.

Greedy-Dual-Size-Frequency: each use of a model sets its priority to `clock + frequency * load
cost / size`; the idle model of lowest priority goes first, and the clock rises to that priority,
so a model used long ago ages out even if it was once busy, and one that is cheap to load again
per byte goes before one that is not. Frequencies are counted for every model a replica is asked
for, resident or not, and halved every `window` requests (TinyLFU's reset), so they follow a
workload that shifts. A newcomer is admitted (TinyLFU) if it is asked for more often, per second
of load and byte, than the models it would displace; else it is served from one spare model's room
and dropped once idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from serve_app.residency.types import Resident

MIB = 2**20


@dataclass
class Frequencies:
    """Requests per model, halved every `window` requests."""

    window: int
    counts: dict[str, float] = field(default_factory=dict)
    seen: int = 0

    def record(self, model: str) -> None:
        self.counts[model] = self.counts.get(model, 0.0) + 1.0
        self.seen += 1
        if self.seen >= self.window:
            self.seen = 0
            self.counts = {m: c / 2 for m, c in self.counts.items() if c >= 0.5}

    def of(self, model: str) -> float:
        return self.counts.get(model, 0.0)


def priority(clock: float, frequency: float, load_s: float, size_bytes: int) -> float:
    """GDSF's value of keeping a model: what loading it again would cost per MiB, as often as it is used."""
    return clock + frequency * max(load_s, 1e-3) / max(size_bytes / MIB, 1e-3)


def expected_load_s(
    model: str, estimate: int, load_s: Mapping[str, float], sizes: Mapping[str, int]
) -> float:
    """How long loading `model` takes: its last load, else the rate per byte of the resident models'."""
    if model in load_s:
        return load_s[model]
    known = [(load_s[m], size) for m, size in sizes.items() if m in load_s]
    seconds, total = sum(s for s, _ in known), sum(b for _, b in known)
    return seconds / total * estimate if total else 0.0


def admits(
    frequencies: Frequencies, newcomer: tuple[str, float, int], victims: Iterable[tuple[str, Resident]]
) -> bool:
    """TinyLFU's admission with GDSF's value without its clock: the newcomer (name, load seconds,
    bytes) is asked for more often than the victims are, per second of load and byte."""
    model, load_s, size = newcomer
    return priority(0.0, frequencies.of(model), load_s, size) > max(
        priority(0.0, frequencies.of(m), e.load_s, e.size_bytes) for m, e in victims
    )
