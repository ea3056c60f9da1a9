"""A replica's side of the deployment's model state.

A replica's runtime starts with the deployment's current model set (not the repository's whole
list); the replica then registers with the holder and follows it: every change of the state is reconciled
into the runtime, one task per model so a slow load never holds up another model, and reported
back; questions (statistics, index) are answered from the runtime. Load, unload, statistics and
index calls of the API go through the holder, so they apply to, and answer for, every replica.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.errors import (
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServeAppError,
    load_not_polled,
    no_ready_version,
    summarize,
    unknown_model,
)
from serve_app.model_state.desired import Answer, Applied, Command, DesiredState, Target, Update
from serve_app.model_state.holder import InProcessHolder, MemoryStore, ModelStateHolder, always_alive
from serve_app.model_state.merge import merge_index, merge_statistics, on_demand_index
from serve_app.residency.cache import ModelCache
from serve_app.residency.types import Budget, MemoryUsed, SizeEstimate
from serve_app.runtimes.base import LoadParameters, Runtime

logger = logging.getLogger(__name__)

# A replica's long poll returns at least this often (liveness of the call itself).
POLL_TIMEOUT_S = 30.0
# How long a load or unload waits for every replica to apply it (a large model loads slowly).
APPLY_TIMEOUT_S = 600.0
# How long a statistics or index read waits for every replica's answer.
COLLECT_TIMEOUT_S = 10.0
# After a failed call to the holder (it restarts), the follower tries again after this long.
RETRY_S = 0.5

_ERRORS: dict[str, type[ServeAppError]] = {
    cls.__name__: cls for cls in (InvalidInputError, ModelNotFoundError, ModelNotReadyError, InternalError)
}


@dataclass(frozen=True)
class OnDemand:
    """On-demand placement: each replica's budget, and how model sizes are estimated and measured."""

    budget: Budget
    estimate: SizeEstimate
    memory_used: MemoryUsed
    release: Callable[[], None] = lambda: None  # after unloads: give freed memory back


class Holder(Protocol):
    """The holder's methods as a replica calls them: through Ray (`actor.ActorHolder`) or in-process."""

    async def call(self, method: str, *args: Any) -> Any: ...


class DeploymentModels:
    """This replica's runtime, kept in step with the deployment's model state."""

    def __init__(
        self,
        runtime: Runtime,
        holder: Holder,
        replica: str,
        namespace: str = "",
        on_demand: OnDemand | None = None,
    ) -> None:
        self._runtime = runtime
        self._holder = holder
        self._replica = replica
        self._namespace = namespace
        self._state = DesiredState()
        self._applied: dict[str, Applied] = {}
        self._applying: dict[str, asyncio.Task[None]] = {}
        self._answering: set[asyncio.Task[None]] = set()
        self._follower: asyncio.Task[None] | None = None
        self._loads = 0
        self._known: set[str] = set()  # the repository's models as the runtime listed them at start
        self._unreported = False  # a report failed: register again, which sends every outcome
        # On-demand placement: which models this replica holds (None: every model, `mode: all`).
        self.residency = (
            None
            if on_demand is None
            else ModelCache(
                runtime,
                on_demand.budget,
                on_demand.estimate,
                on_demand.memory_used,
                self.servable,
                release=on_demand.release,
            )
        )

    @classmethod
    def in_process(cls, runtime: Runtime) -> DeploymentModels:
        """A deployment of this one replica, its holder in this process: no Ray (tests,
        benchmarks). It follows once `join`ed, after the runtime started."""
        return cls(runtime, InProcessHolder(ModelStateHolder(MemoryStore(), always_alive)), "local")

    async def join(self, state: DesiredState | None = None) -> None:
        """Follow the deployment's state from `state`, the snapshot whose `wants` the runtime
        started with (`holder.call("snapshot")`; None: a fresh deployment's, everything)."""
        self._state = state or DesiredState()
        rows = self._runtime.index()
        self._known = {row.name for row in rows}
        self._loads = len({row.name for row in rows if row.state == "READY"})
        # What failed to load at start; on demand a replica loads nothing but its warm set then.
        failed = {} if self.residency else {row.name: row.reason for row in rows if row.state != "READY"}
        self._applied = {
            model: Applied(target.generation, failed.get(model, "") if target.loaded else "")
            for model, target in self._state.targets.items()
        }
        await self._register()
        self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        """Leave the deployment (nothing waits for this replica any more), then stop following."""
        try:
            await self._holder.call("leave", self._replica)
        except Exception as exc:  # noqa: BLE001 - a holder already gone forgets replicas itself
            logger.warning("could not leave the model state: %s", exc)
        if self.residency is not None:
            await self.residency.stop()
        tasks = [t for t in (self._follower, *self._applying.values(), *self._answering) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _register(self) -> None:
        state = await self._holder.call("register", self._replica, self._namespace, dict(self._applied))
        self._adopt(state)

    async def _follow(self) -> None:
        while True:
            try:
                if self._unreported:
                    self._unreported = False
                    await self._register()
                update: Update | None = await self._holder.call(
                    "changes", self._replica, self._state.epoch, POLL_TIMEOUT_S
                )
                if update is None:  # a holder that does not know this replica (restarted without it)
                    await self._register()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the holder restarts; follow it again
                logger.warning("model state: %s; retrying", summarize(exc))
                await asyncio.sleep(RETRY_S)
                continue
            if update.state is not None:
                self._adopt(update.state)
            for command in update.commands:
                task = asyncio.get_running_loop().create_task(self._answer(command))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)

    def _adopt(self, state: DesiredState) -> None:
        if state.epoch < self._state.epoch:
            return
        self._state = state
        for model, target in state.targets.items():
            behind = target.generation > self._applied.get(model, Applied(0)).generation
            if behind and model not in self._applying:
                self._applying[model] = asyncio.get_running_loop().create_task(self._apply(model))

    async def _apply(self, model: str) -> None:
        """Bring `model` to its latest target, then report; again if it moved on meanwhile."""
        try:
            while True:
                target = self._state.targets[model]
                applied = Applied(target.generation, await self._error_of(model, target))
                self._applied[model] = applied
                try:
                    await self._holder.call("report", self._replica, model, applied)
                except Exception as exc:  # noqa: BLE001 - sent again when this replica registers again
                    logger.warning("could not report model '%s': %s", model, summarize(exc))
                    self._unreported = True
                if self._state.targets[model].generation == target.generation:
                    return
        finally:
            del self._applying[model]

    async def _error_of(self, model: str, target: Target) -> str:
        """Load (with the target's parameters) or unload `model` in the runtime (on demand: load
        again or unload where it is resident); why it failed, "" when it did not."""
        try:
            if self.residency is not None:
                await (self.residency.reload(model) if target.loaded else self.residency.drop(model))
            elif target.loaded:
                await self._runtime.load(model, dict(target.parameters))
                self._loads += 1
            else:
                await self._runtime.unload(model)
        except ModelNotFoundError as exc:
            return str(exc) if target.loaded else ""  # unloading a model this replica does not have: done
        except ServeAppError as exc:
            return str(exc)
        except Exception as exc:  # reported to the client that asked for the change
            logger.exception("model '%s': %s failed", model, "load" if target.loaded else "unload")
            return summarize(exc)
        return ""

    async def _answer(self, command: Command) -> None:
        try:
            answer = Answer(self._value_of(command))
        except ServeAppError as exc:
            answer = Answer(error_type=type(exc).__name__, error=str(exc))
        try:
            await self._holder.call("reply", self._replica, command.id, answer)
        except Exception as exc:  # noqa: BLE001 - the asker times out and says which replica was silent
            logger.warning("could not answer the model state: %s", summarize(exc))

    def _value_of(self, command: Command) -> Any:
        if command.kind == "statistics":
            return self._runtime.statistics(*command.args)
        if self.residency is not None:
            return {"loaded": self.residency.resident(), "failed": self.residency.failures()}
        return [row.as_dict() for row in self._runtime.index()]

    def servable(self, model: str) -> LoadParameters:
        """The parameters `model` loads with; raises unless the deployment serves it (on demand:
        whether resident here or not)."""
        parameters = self._state.load_parameters(model)
        if parameters is None:
            raise no_ready_version(model, "unloaded")
        if model not in self._state.targets and model not in self._known:
            raise unknown_model(model)
        return parameters

    def describe(self) -> dict[str, Any]:
        """This replica's models for GET /v2: those loaded here, and loads since it started."""
        if self.residency is not None:
            return self.residency.describe()
        loaded = sorted({row.name for row in self._runtime.index() if row.state == "READY"})
        return {"loaded_models": loaded, "model_loads": self._loads}

    # --- the API's calls, for the whole deployment --------------------------------------------

    async def load(self, model: str, parameters: LoadParameters) -> None:
        """Load on every replica, with the load's parameters; a model the repository does not have
        is refused before anything is recorded (Triton's text)."""
        if not await self._runtime.in_repository(model):
            raise load_not_polled(model, f"no model directory '{model}' in the repository")
        await self._change(model, loaded=True, parameters=dict(parameters))

    async def unload(self, model: str) -> None:
        known = any(row.name == model for row in self._runtime.index())
        if not known and not await self._runtime.in_repository(model):
            raise unknown_model(model)
        await self._change(model, loaded=False)

    async def _change(self, model: str, loaded: bool, parameters: dict[str, str] | None = None) -> None:
        outcomes: dict[str, str] = await self._holder.call(
            "apply", model, loaded, APPLY_TIMEOUT_S, parameters, uuid.uuid4().hex
        )
        failures: dict[str, list[str]] = {}
        for replica, error in sorted(outcomes.items()):
            if error:
                failures.setdefault(error, []).append(replica)
        if failures:
            what = "; ".join(f"{error} (replicas {', '.join(names)})" for error, names in failures.items())
            failed = sum(len(names) for names in failures.values())
            raise ModelNotReadyError(f"{what}: failed on {failed} of {len(outcomes)} replicas")

    async def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        return merge_statistics(list((await self._collect("statistics", model, version)).values()))

    async def index(self) -> list[dict[str, Any]]:
        answers = await self._collect("index")
        if self.residency is None:
            return merge_index(answers)
        names = sorted({row.name for row in self._runtime.index()} | set(self._state.targets))
        return on_demand_index(names, self._state.wants, answers)

    async def _collect(self, kind: str, *args: Any) -> dict[str, Any]:
        """Every replica's answer by replica; the first error when no replica had an answer
        (e.g. an unknown model)."""
        answers: dict[str, Answer] = await self._holder.call("collect", kind, args, COLLECT_TIMEOUT_S)
        values = {replica: a.value for replica, a in answers.items() if not a.error}
        errors = [a for a in answers.values() if a.error]
        for answer in errors:
            if not answer.error_type:
                logger.warning("model state: %s", answer.error)
        if not values and errors:
            typed = next((a for a in errors if a.error_type), errors[0])
            raise _ERRORS.get(typed.error_type, InternalError)(typed.error)
        return values
