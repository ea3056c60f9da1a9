"""Whether a replica may serve a model now, and with what load parameters: the deployment's wish,
models added to the repository since the start, and failed loads, each refused with its reason at
once until its back-off passes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serve_app.errors import ModelNotFoundError, ServeAppError
from serve_app.residency.types import Admission
from serve_app.runtimes.base import NO_PARAMETERS, LoadParameters

logger = logging.getLogger(__name__)

# A failed load is retried after this long, doubling with each failure up to the last.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


def is_model_name(name: str) -> bool:
    """A name that can only be a directory of the repository (as model control requires)."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\\" not in name


@dataclass
class Failure:
    """Why a model's last load failed; requests get a fresh error of its kind until `retry_at`."""

    kind: type[ServeAppError]
    message: str
    retry_at: float
    attempts: int


class LoadFailures:
    """The failed loads of a replica's models, with their back-offs."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._failures: dict[str, Failure] = {}

    def record(self, model: str, error: ServeAppError) -> None:
        previous = self._failures.get(model)
        attempts = previous.attempts + 1 if previous else 1
        retry_in = BACKOFF_S[min(attempts, len(BACKOFF_S)) - 1]
        self._failures[model] = Failure(type(error), str(error), self._clock() + retry_in, attempts)
        logger.warning("model '%s' failed to load (again in %.0f s): %s", model, retry_in, error)

    def raise_if_backing_off(self, model: str) -> None:
        failure = self._failures.get(model)
        if failure is not None and self._clock() < failure.retry_at:
            raise failure.kind(failure.message)  # a fresh one: a raise would keep every request's frames

    def forget(self, model: str) -> None:
        self._failures.pop(model, None)

    def reasons(self) -> dict[str, str]:
        """Models whose last load failed and whose back-off has not passed, with the reason."""
        now = self._clock()
        return {m: f.message for m, f in self._failures.items() if now < f.retry_at}


class Servable:
    """The models a replica may serve: `admit` (the deployment's wish, raising its reason when it
    does not serve a model) and the repository (`in_repository`: a model added since the start)."""

    def __init__(
        self, admit: Admission, in_repository: Callable[[str], Awaitable[bool]], clock: Callable[[], float]
    ) -> None:
        self._admit = admit
        self._in_repository = in_repository
        self._found: set[str] = set()  # models found in the repository since the start
        self.failures = LoadFailures(clock)

    def check(self, model: str) -> None:
        """Raise why `model` cannot be served now: not servable, or its last load failed and its
        back-off has not passed. A model that can is ready, resident here or not."""
        if model not in self._found:
            self._admit(model)
        self.failures.raise_if_backing_off(model)

    async def look_up(self, model: str) -> None:
        """`check`, where a model unknown here is looked for in the repository (added since)."""
        try:
            self.check(model)
        except ModelNotFoundError:
            if not is_model_name(model) or not await self._in_repository(model):
                raise
            self._found.add(model)
            self.failures.raise_if_backing_off(model)

    def parameters(self, model: str) -> LoadParameters | None:
        """What `model` loads with now; None once the deployment no longer serves it."""
        try:
            return self._admit(model)
        except ModelNotFoundError:  # added to the repository since the start: no override
            return NO_PARAMETERS if model in self._found else None
        except ServeAppError:  # unloaded for the deployment meanwhile
            return None

    def raise_reason(self, model: str) -> None:
        """Raise the deployment's reason for not serving `model` (returns if it serves it)."""
        self._admit(model)
