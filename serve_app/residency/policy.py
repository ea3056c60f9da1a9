"""Which models a replica keeps when it has no room: frequency, recency and size, not recency alone.

Greedy-Dual-Size-Frequency: each use of a model sets its priority to `clock + frequency * load
cost / size`; the idle model of lowest priority goes first, and the clock rises to that priority,
so a model used long ago ages out even if it was once busy, and one that is cheap to load again
per byte goes before one that is not. Frequencies are counted for every model a replica is asked
for, resident or not, and halved every `window` requests (TinyLFU's reset), so they follow a
workload that shifts. A newcomer worth less than what it would displace is not admitted: it is
served from one spare model's room and dropped once idle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
