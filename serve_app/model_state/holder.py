"""The deployment's model state: one holder per deployment, every replica reconciles to it.

The holder keeps the desired model set (`DesiredState`), which replica applied which change, and
relays questions (statistics, index) to every replica. It pushes nothing: each replica keeps one
long-poll call (`changes`) open, which returns at once when the state moved on or a question
waits, so a replica that missed a change catches up when it next asks. What must outlive the
holder (the state, the replicas' reports, the repository's fingerprints) goes to a `Store` on
every change; a holder that restarts resumes from it, and replicas re-register when it did not
know them. Ray-free: `actor.py` runs it as the deployment-scoped actor Serve manages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from serve_app.model_state.desired import Answer, Applied, Command, DesiredState, Update

logger = logging.getLogger(__name__)

# How often a wait checks that the replicas it waits for still exist.
LIVENESS_CHECK_S = 1.0
# Recent load and unload requests remembered by id (a retried request waits for its own change).
KEPT_CHANGE_IDS = 256
# Model directory name → fingerprint of its files; None when the repository could not be read.
Fingerprint = Callable[[], dict[str, str] | None]


class Store(Protocol):
    """Where the holder keeps what must outlive it (a JSON document)."""

    def get(self) -> dict[str, Any] | None: ...

    def put(self, document: dict[str, Any]) -> None: ...


class MemoryStore:
    """A store that lives as long as the process (one holder, or tests)."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        return self.document

    def put(self, document: dict[str, Any]) -> None:
        self.document = document


@dataclass
class ReplicaRecord:
    """A replica the holder waits for: its Ray actor name and what it reported applying."""

    name: str
    namespace: str
    # None: known from before the holder restarted, not yet registered again (so not yet waited on
    # as done; it is asked to register at its next long poll, or dropped once it is gone).
    applied: dict[str, Applied] | None = field(default_factory=dict)
    mailbox: list[Command] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


# Whether a replica still exists (its Ray actor is alive).
Liveness = Callable[[ReplicaRecord], Awaitable[bool]]


class ModelStateHolder:
    def __init__(
        self,
        store: Store,
        alive: Liveness,
        fingerprint: Fingerprint | None = None,
        poll_s: float | None = None,
    ) -> None:
        self._store = store
        self._alive = alive
        self._fingerprint = fingerprint
        self._poll_s = poll_s
        self._poller: asyncio.Task[None] | None = None
        self._replicas: dict[str, ReplicaRecord] = {}
        self._fingerprints: dict[str, str] | None = None
        self._state = DesiredState()
        self._answers: dict[int, dict[str, Answer]] = {}
        self._command_ids = itertools.count(1)
        self._pulse = asyncio.Event()  # set and replaced whenever a report or an answer arrives
        # The generation each recent load or unload request made, by its id: a caller that retries
        # on a new holder waits for its change instead of making it again.
        self._changes: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._checked = 0.0  # when the replicas waited for were last checked for liveness
        self._restore(store.get())

    # --- what outlives the holder ------------------------------------------------------------

    def _restore(self, document: Mapping[str, Any] | None) -> None:
        if not document:
            return
        self._state = DesiredState.from_json(document["state"])
        for name, namespace in document.get("replicas", {}).items():
            self._replicas[name] = ReplicaRecord(name, namespace, applied=None)
        self._fingerprints = document.get("fingerprints")
        self._changes.update((key, (model, gen)) for key, (model, gen) in document.get("changes", {}).items())
        logger.info("model state restored: epoch %d, %d replicas", self._state.epoch, len(self._replicas))

    def _save(self, state: DesiredState | None = None) -> None:
        """What outlives the holder: the state (`state`, about to be published), the replicas to
        wait for, the repository's fingerprints and the recent changes' ids. Reports are not kept:
        a replica registers again with a new holder, which asks it to at its next long poll."""
        document = {
            "state": (state or self._state).as_json(),
            "replicas": {r.name: r.namespace for r in self._replicas.values()},
            "fingerprints": self._fingerprints,
            "changes": {key: list(value) for key, value in self._changes.items()},
        }
        self._store.put(document)

    def _notify(self) -> None:
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    # --- replicas ----------------------------------------------------------------------------

    async def snapshot(self) -> DesiredState:
        self._start_polling()
        return self._state

    async def register(self, replica: str, namespace: str, applied: dict[str, Applied]) -> DesiredState:
        """A replica that serves: from now on changes wait for it. Returns the state to reconcile to."""
        self._start_polling()
        previous = self._replicas.get(replica)
        record = self._replicas[replica] = ReplicaRecord(replica, namespace, dict(applied))
        if previous is not None:
            record.mailbox = previous.mailbox  # questions asked before it registered again
        else:
            self._save()
        self._notify()
        return self._state

    async def leave(self, replica: str) -> None:
        """A replica that stops serving (Serve drains it): nothing waits for it any more."""
        if self._replicas.pop(replica, None) is not None:
            self._save()
            self._notify()

    async def changes(self, replica: str, known_epoch: int, timeout_s: float) -> Update | None:
        """Long poll: returns when the state is newer than `known_epoch`, a question waits, or at
        the timeout. None: the holder does not know the replica (it must register again)."""
        record = self._replicas.get(replica)
        if record is None or record.applied is None:
            return None
        if self._state.epoch <= known_epoch and not record.mailbox:
            record.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin before Python 3.11
                await asyncio.wait_for(record.wake.wait(), timeout_s)
            if self._replicas.get(replica) is not record:  # dropped or re-registered meanwhile
                return None
        commands, record.mailbox = tuple(record.mailbox), []
        return Update(self._state if self._state.epoch > known_epoch else None, commands)

    async def report(self, replica: str, model: str, applied: Applied) -> None:
        record = self._replicas.get(replica)
        if record is None or record.applied is None:
            return
        record.applied[model] = applied
        self._notify()

    async def reply(self, replica: str, command_id: int, answer: Answer) -> None:
        answers = self._answers.get(command_id)
        if answers is not None:
            answers[replica] = answer
            self._notify()

    # --- changes and questions ----------------------------------------------------------------

    async def apply(
        self,
        model: str,
        loaded: bool,
        timeout_s: float,
        parameters: dict[str, str] | None = None,
        change_id: str = "",
    ) -> dict[str, str]:
        """Load (`loaded`, with the load's `parameters`) or unload `model` on every replica: the
        outcomes of `wait_applied`.

        One call for both halves, so that a caller whose holder died retries the whole change.
        Changes are applied in the order they reach the holder: of two clients loading and
        unloading the same model at once, the later one's wins, and the earlier one's answer
        counts as applied once its change is superseded. A `change_id` this holder (or the one
        before it) already recorded is waited for, not made again.
        """
        recorded = self._changes.get(change_id) if change_id else None
        if recorded is None:
            self._change(model, loaded, parameters, change_id)
            recorded = (model, self._state.generation(model))
        return await self._wait_applied(model, recorded[1], loaded, timeout_s)

    def _change(
        self, model: str, loaded: bool, parameters: dict[str, str] | None = None, change_id: str = ""
    ) -> None:
        """Record one change, kept before it is published (a store that fails changes nothing)."""
        state = self._state.with_target(model, loaded, parameters)
        if change_id:
            self._changes[change_id] = (model, state.generation(model))
            while len(self._changes) > KEPT_CHANGE_IDS:
                self._changes.popitem(last=False)
        self._save(state)
        self._state = state
        for record in self._replicas.values():
            record.wake.set()

    async def _wait_applied(
        self, model: str, generation: int, loaded: bool, timeout_s: float
    ) -> dict[str, str]:
        """Wait until every replica has applied `generation` of `model` (or a later one); its
        error, "" where it succeeded, by replica. Replicas that no longer exist are dropped.

        A later change of the same kind (a reload by the repository poll, another client's load)
        answers for this one, its error included; one of the other kind replaced this one."""
        await self._until(
            lambda record: (record.applied or {}).get(model, Applied(0)).generation >= generation, timeout_s
        )
        same_kind = self._state.wants(model) == loaded
        outcomes = {}
        for record in self._replicas.values():
            applied = (record.applied or {}).get(model, Applied(0))
            if applied.generation < generation:
                outcomes[record.name] = f"did not apply it within {timeout_s:g} s"
            else:
                outcomes[record.name] = applied.error if applied.generation == generation or same_kind else ""
        return outcomes

    async def collect(self, kind: str, args: tuple[Any, ...], timeout_s: float) -> dict[str, Answer]:
        """Ask every replica `kind` (statistics, index); their answers by replica. A replica that
        does not answer in time gets an Answer with only `error` set."""
        command = Command(next(self._command_ids), kind, args)
        answers: dict[str, Answer] = {}
        self._answers[command.id] = answers
        for record in self._replicas.values():
            record.mailbox.append(command)
            record.wake.set()
        try:
            await self._until(lambda record: record.name in answers, timeout_s)
        finally:
            del self._answers[command.id]
        for name in self._replicas.keys() - answers.keys():
            answers[name] = Answer(error=f"replica {name} did not answer within {timeout_s:g} s")
        return answers

    async def _until(self, done: Callable[[ReplicaRecord], bool], timeout_s: float) -> None:
        """Wait until `done` holds for every registered replica, dropping those that died (checked
        every LIVENESS_CHECK_S, however busy the holder is)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            pending = [r for r in self._replicas.values() if r.applied is None or not done(r)]
            remaining = deadline - loop.time()
            if not pending or remaining <= 0:
                return
            if loop.time() - self._checked >= LIVENESS_CHECK_S:
                self._checked = loop.time()
                await self._drop_dead(pending)
                continue
            pulse = self._pulse
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pulse.wait(), min(remaining, LIVENESS_CHECK_S))

    async def _drop_dead(self, records: list[ReplicaRecord]) -> None:
        dead = [
            r
            for r, alive in zip(records, await asyncio.gather(*map(self._alive, records)), strict=True)
            if not alive
        ]
        for record in dead:
            if self._replicas.get(record.name) is record:
                del self._replicas[record.name]
                logger.info("replica %s is gone; nothing waits for it", record.name)
        if dead:
            self._save()

    # --- repository polling ------------------------------------------------------------------

    def _start_polling(self) -> None:
        if self._poll_s is None or self._fingerprint is None or self._poller is not None:
            return
        self._poller = asyncio.get_running_loop().create_task(self._poll(self._fingerprint, self._poll_s))

    async def _poll(self, fingerprint: Fingerprint, poll_s: float) -> None:
        """Triton's POLL mode for the deployment: models added, changed or removed in the
        repository become loads, reloads and unloads that every replica applies."""
        while self._fingerprints is None:  # a fresh deployment: the replicas load what is there now
            self._fingerprints = await asyncio.to_thread(fingerprint)
            if self._fingerprints is None:  # unreadable for now: no baseline, so no changes yet
                await asyncio.sleep(poll_s)
        self._save()
        while True:
            await asyncio.sleep(poll_s)
            try:
                current = await asyncio.to_thread(fingerprint)
                if current is not None and current != self._fingerprints:
                    self.apply_repository(current)
            except Exception:  # the next poll tries again
                logger.exception("repository poll failed")

    def apply_repository(self, current: dict[str, str]) -> list[str]:
        """The changes a new repository listing makes; the models they touch."""
        before = self._fingerprints or {}
        touched = []
        for model in sorted(current.keys() | before.keys()):
            if model not in before:
                self._change(model, True)  # added: Triton's poll loads a new model
            elif model not in current:
                self._change(model, False)
            elif current[model] != before[model] and self._state.wants(model):
                # Changed: reloaded from its files (an unloaded one stays unloaded; an override goes).
                self._change(model, True)
            else:
                continue
            touched.append(model)
        self._fingerprints = current
        self._save()
        if touched:
            logger.info("repository changed: %s", ", ".join(touched))
        return touched


class InProcessHolder:
    """A holder in the replica's own process: one replica without Ray (tests, benchmarks)."""

    def __init__(self, holder: ModelStateHolder) -> None:
        self.holder = holder

    async def call(self, method: str, *args: Any) -> Any:
        return await getattr(self.holder, method)(*args)


async def always_alive(record: ReplicaRecord) -> bool:
    return True
