"""The boundary every runtime satisfies: numpy in, numpy out, keyed by tensor name.

The dataplane talks only to this protocol, so the HTTP layer never branches on
which runtime serves the models. A runtime owns devices, threads and batching.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from serve_app.errors import InvalidInputError, no_ready_version, unknown_version, version_not_ready
from serve_app.repository import ModelSignature


@dataclass(frozen=True, slots=True)
class InferOptions:
    """How a request is scheduled, as Triton's request fields say it (all optional)."""

    priority: int = 0  # 0: the model's default priority level
    timeout_us: int = 0  # 0: no timeout
    sequence_id: int | str = 0  # 0 / "": not part of a sequence
    sequence_start: bool = False
    sequence_end: bool = False
    # Other request parameters, handed to the model's backend as they are.
    parameters: tuple[tuple[str, str | int | float | bool], ...] = ()


NO_OPTIONS = InferOptions()

# A load's parameters as Triton takes them: `config`, a JSON model configuration that replaces
# config.pbtxt for this load (the only one serve_app applies).
LoadParameters = Mapping[str, str]
NO_PARAMETERS: LoadParameters = MappingProxyType({})

# Which of the repository's models a runtime loads at start, and with which load parameters
# (None: not loaded): the deployment's set, with the overrides its loads gave.
Wanted = Callable[[str], LoadParameters | None]


def everything(model: str) -> LoadParameters:
    return NO_PARAMETERS


# std::stol as Triton reads a version string: leading blanks, a sign, ASCII digits, the rest ignored.
_STOL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def model_version(text: str) -> int:
    """A requested version as Triton reads it ("01" and "1 " are version 1), or Triton's 400."""
    match = _STOL.match(text)
    if match is None or not -(2**63) <= int(match[1]) < 2**63:
        raise InvalidInputError(
            f"failed to get model version from specified version string '{text}' (details: stol), "
            "version should be an integral value > 0"
        )
    number = int(match[1])
    if number < 0:
        raise InvalidInputError(
            f"invalid model version specified '{text}' , version should be an integral value > 0"
        )
    return number


def pick_version(
    model: str, number: int | None, known: Collection[int], ready: Sequence[int], why: Callable[[], str]
) -> str:
    """The version that serves a request for `number` (None: the latest ready one), as Triton
    picks it: a version it does not have is 404, one it has that is not ready 503 (with `why`)."""
    if number is None:
        if not ready:
            raise no_ready_version(model, why())
        return str(max(ready))
    if number in ready:
        return str(number)
    if number in known:
        raise version_not_ready(model, number, why())
    raise unknown_version(model, number)


@dataclass(frozen=True)
class ModelState:
    """One row of `/v2/repository/index`."""

    name: str
    version: str | None
    state: str  # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "state": self.state, "reason": self.reason}
        if self.version is not None:
            row["version"] = self.version
        return row


class Runtime(Protocol):
    """A model executor behind the dataplane (TorchRuntime, TritonRuntime)."""

    name: str

    async def start(self, wanted: Wanted = everything) -> None:
        """Load the repository's `wanted` models with their parameters; a broken entry must not
        fail the start."""

    async def stop(self) -> None:
        """Finish requests in flight, then release models and devices."""

    def healthy(self) -> bool:
        """False when the runtime can no longer serve (Serve then replaces the replica)."""

    def server_metadata(self) -> dict[str, Any]:
        """`GET /v2` body."""

    def device(self) -> str:
        """Where models run, e.g. "cpu" or "cuda:0 (GPU 3)"; shown to operators."""

    def index(self) -> list[ModelState]:
        """Every model in the repository, loaded or not."""

    def resolve(self, model: str, version: str | None) -> str:
        """The version that serves `model` (latest ready if None); 404/503 errors otherwise."""

    def signature(self, model: str, version: str) -> ModelSignature:
        """Inputs, outputs and max batch size the dataplane validates against."""

    def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        """`GET /v2/models/{model}[/versions/{v}]` body."""

    def config(self, model: str, version: str | None) -> dict[str, Any]:
        """`GET /v2/models/{model}/config` body (Triton's JSON model config)."""

    def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        """`GET /v2/models[/{model}]/stats` body, in Triton's format."""

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        output_names: list[str],
        options: InferOptions = NO_OPTIONS,
    ) -> dict[str, np.ndarray]:
        """Run validated inputs; return the named outputs."""

    async def in_repository(self, model: str) -> bool:
        """Whether the repository has a directory `model` (loaded or not)."""

    async def load(self, model: str, parameters: LoadParameters = NO_PARAMETERS) -> None:
        """(Re)load a model from the repository; `config` in `parameters` replaces its config.pbtxt."""

    async def unload(self, model: str) -> None:
        """Unload a model; requests already running complete."""
