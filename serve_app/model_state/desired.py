"""What the deployment wants of its models, and what a replica reports it has done about it.

Neutral types, passed between the state holder and the replicas (Ray pickles them) and kept in
Ray's GCS key-value store as JSON. A model the state names nothing about is served wherever the
repository has it: a fresh deployment serves the whole repository, as Triton does at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class Target:
    """One model's wanted state; every change of it (a load, an unload, a repository change)
    takes a new generation, which replicas apply in order and report. `parameters` are the load's
    (Triton's `config` override): every replica, and every replica that starts later, loads the
    model with them until another load or a repository change replaces them."""

    loaded: bool
    generation: int
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Applied:
    """What one replica did with a model's generation: applied it, or why it could not."""

    generation: int
    error: str = ""


@dataclass(frozen=True)
class DesiredState:
    """The deployment's model set; `epoch` counts its changes."""

    epoch: int = 0
    targets: Mapping[str, Target] = field(default_factory=lambda: MappingProxyType({}))

    def wants(self, model: str) -> bool:
        target = self.targets.get(model)
        return target is None or target.loaded

    def load_parameters(self, model: str) -> dict[str, str] | None:
        """The parameters a replica loads `model` with; None when the deployment does not want it."""
        target = self.targets.get(model)
        if target is None:
            return {}
        return dict(target.parameters) if target.loaded else None

    def generation(self, model: str) -> int:
        target = self.targets.get(model)
        return 0 if target is None else target.generation

    def with_target(
        self, model: str, loaded: bool, parameters: Mapping[str, str] | None = None
    ) -> DesiredState:
        """The state after one change of `model` (its generation and the epoch move on)."""
        target = Target(loaded, self.generation(model) + 1, tuple(sorted((parameters or {}).items())))
        targets = {**self.targets, model: target}
        return replace(self, epoch=self.epoch + 1, targets=MappingProxyType(targets))

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "targets": {
                name: [t.loaded, t.generation, dict(t.parameters)] for name, t in self.targets.items()
            },
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> DesiredState:
        targets = {}
        for name, fields in document["targets"].items():
            parameters = fields[2] if len(fields) > 2 else {}  # kept before loads had parameters
            targets[name] = Target(bool(fields[0]), int(fields[1]), tuple(sorted(parameters.items())))
        return cls(int(document["epoch"]), MappingProxyType(targets))


@dataclass(frozen=True, slots=True)
class Command:
    """A question the holder relays to every replica (`collect`); answered with `reply`."""

    id: int
    kind: str  # "statistics" | "index"
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Update:
    """A replica's long-poll answer: the new state when it changed, and questions to answer."""

    state: DesiredState | None
    commands: tuple[Command, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """One replica's answer to a command: a value, or the error it raised (by type name)."""

    value: Any = None
    error_type: str = ""
    error: str = ""
