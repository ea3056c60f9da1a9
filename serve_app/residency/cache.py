"""A replica's models on demand: loaded by the first request that needs them, kept within a budget.

`ModelCache.use(model)` wraps one inference: a model already resident is a hit; otherwise the
request loads it (concurrent requests for it wait for that one load; loads of different models
run side by side). When the replica is full (`max_models`, `memory_bytes`), idle models are
evicted by `policy.priority`, never one with a request in flight or one that requests are waiting
to take; a newcomer asked for less often than what it would displace waits for one spare model's
room (at most its own load's time), is served there and dropped once idle, so the replica never
holds more than its budget plus one model. A model larger than the whole budget is refused (507)
instead of emptying the replica for it; a load that fails is answered at once with its reason
until its back-off has passed. Models idle for `idle_unload_s` are unloaded.

Decisions about room take effect under one condition (`_room`) at once: victims leave `_resident`
before anything is awaited, so no request takes a model whose eviction was decided. Loads and
unloads run outside it under their model's lock, never waiting for the room: no deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from serve_app.errors import InsufficientStorageError, ModelNotFoundError, ServeAppError, unknown_model
from serve_app.residency.admission import Servable
from serve_app.residency.memory import LoadMeter
from serve_app.residency.policy import Frequencies, admits, expected_load_s, priority
from serve_app.residency.types import (
    Admission,
    Budget,
    Counters,
    MemoryUsed,
    Resident,
    SizeEstimate,
)
from serve_app.runtimes.base import LoadParameters, Runtime

logger = logging.getLogger(__name__)

# Load times kept for the metrics exporter to take (it takes them every interval).
KEPT_LOAD_TIMES = 4096
# Frequencies are halved every this many requests per slot of the budget (TinyLFU's sample).
WINDOW_PER_SLOT = 20
# A newcomer not worth a resident's room waits for the spare room as long as its own load takes (at
# least this long) before it evicts the lowest-priority idle model instead.
SPARE_WAIT_S = 0.05


class ModelCache:
    def __init__(
        self,
        runtime: Runtime,
        budget: Budget,
        estimate: SizeEstimate,
        memory_used: MemoryUsed,
        admit: Admission,
        clock: Callable[[], float] = time.monotonic,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self._runtime = runtime
        self._budget = budget
        self._estimate = estimate
        self._clock = clock
        self._meter = LoadMeter(memory_used, release)  # release: freed memory back to the system
        slots = budget.max_models or 16
        self._frequencies = Frequencies(window=WINDOW_PER_SLOT * slots)
        self._age = 0.0  # GDSF's clock: the priority of the last model evicted
        self._resident: dict[str, Resident] = {}
        self._loading: dict[str, asyncio.Task[Resident]] = {}
        # Requests waiting for a model's load: it is theirs once loaded, not idle before they run.
        self._waiting: dict[str, int] = {}
        # Bytes of the loads and unloads under way, by ("load" | "unload", model): still taken.
        self._reserved: dict[tuple[str, str], int] = {}
        self._spare_loading: set[str] = set()  # loads under way into the spare room
        self._locks: dict[str, asyncio.Lock] = {}  # one load or unload of a model at a time
        self._servable = Servable(admit, runtime.in_repository, clock)
        self._failures = self._servable.failures
        self._load_s: dict[str, float] = {}  # each model's last load time, resident or not
        self._room = asyncio.Condition()
        self._room_waiters = 0
        self._idle_task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._unload_listeners: list[Callable[[str], None]] = []
        self.counters = Counters()

    @property
    def budget(self) -> Budget:
        return self._budget

    def before_unload(self, listener: Callable[[str], None]) -> None:
        """Call `listener(model)` just before the runtime unloads a model, while its statistics
        still exist (an unloaded model's statistics go with it)."""
        self._unload_listeners.append(listener)

    # --- serving ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, model: str) -> AsyncIterator[float]:
        """Hold `model` resident for one request; yields how long it waited for a load (0.0: a hit)."""
        entry = self._resident.get(model)
        waited = 0.0
        if entry is None:
            started = self._clock()
            await self._servable.look_up(model)  # before it counts: a name that is no model leaves no trace
            self._frequencies.record(model)
            self.counters.misses += 1
            while entry is None:  # evicted between its load and this request's turn: load again
                self._waiting[model] = self._waiting.get(model, 0) + 1
                try:
                    await self._load_once(model)
                finally:
                    self._waiting[model] -= 1
                    if not self._waiting[model]:
                        del self._waiting[model]
                entry = self._resident.get(model)
            waited = self._clock() - started
        else:
            self._frequencies.record(model)
            self.counters.hits += 1
        entry.in_flight += 1
        entry.priority = priority(self._age, self._frequencies.of(model), entry.load_s, entry.size_bytes)
        try:
            yield waited
        finally:
            entry.in_flight -= 1
            entry.last_used = self._clock()
            if entry.in_flight == 0 and (not entry.admitted or self._room_waiters):
                self._released(model, entry)

    def resident(self) -> list[str]:
        return list(self._resident)

    def resident_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self._resident.values())

    def failures(self) -> dict[str, str]:
        """Models whose last load failed and whose back-off has not passed, with the reason."""
        return self._failures.reasons()

    def adopt(self, models: list[str]) -> None:
        """Models the runtime loaded at start (the warm set) count as resident and admitted."""
        for model in models:
            size = self._estimate(model)
            entry = Resident(size, 0.0, priority(self._age, 0.0, 0.0, size), True, last_used=self._clock())
            self._resident[model] = entry

    def holds(self, model: str) -> bool:
        return model in self._resident

    def check(self, model: str) -> None:
        """Raise why `model` cannot be served now (see `Servable.check`)."""
        self._servable.check(model)

    # --- loading ----------------------------------------------------------------------------

    async def _load_once(self, model: str) -> Resident:
        task = self._loading.get(model)
        if task is None:
            task = self._loading[model] = asyncio.get_running_loop().create_task(self._load(model))
            task.add_done_callback(lambda _: self._loading.pop(model, None))
        return await asyncio.shield(task)  # a client that gives up does not cancel the others' load

    async def _load(self, model: str) -> Resident:
        if model in self._resident:  # loaded while this waited for an unload to finish
            return self._resident[model]
        estimate = await asyncio.to_thread(self._estimate, model)
        if self._budget.memory_bytes is not None and estimate > self._budget.memory_bytes:
            raise InsufficientStorageError(
                f"model '{model}' needs about {estimate} bytes, more than the replica's whole memory "
                f"budget of {self._budget.memory_bytes} bytes (args.model_placement.memory_budget_bytes)"
            )
        admitted = await self._make_room(model, estimate)
        try:
            async with self._lock(model):
                load_s, grew = await self._load_current(model)
        except BaseException:
            await self._free("load", model)
            raise
        self._failures.forget(model)
        self._load_s[model] = load_s
        size = max(estimate, grew)
        entry = Resident(
            size, load_s, priority(self._age, self._frequencies.of(model), load_s, size), admitted
        )
        entry.last_used = self._clock()
        self._resident[model] = entry  # before its reservation goes: its room never counts as free
        await self._free("load", model)
        self.counters.loads += 1
        if len(self.counters.load_seconds) < KEPT_LOAD_TIMES:  # none taken: metrics are off
            self.counters.load_seconds.append(load_s)
        logger.info(
            "loaded model '%s' in %.2f s (%d bytes%s)", model, load_s, size, "" if admitted else ", spare"
        )
        if admitted and size > estimate:
            await self._trim()
        self._start_idle_unloads()
        return entry

    async def _load_current(self, model: str) -> tuple[float, int]:
        """Load `model` with the deployment's current parameters; if they changed while it loaded
        (a reload) load again, and if the deployment stopped serving it (an unload) unload it.
        Returns the load's seconds and the memory it was measured to take (0: not measured)."""
        loaded_with: LoadParameters | None = None
        load_s, grew = 0.0, 0
        while True:
            parameters = self._servable.parameters(model)
            if parameters is None:
                if loaded_with is not None:
                    await self._unload(model)
                self._servable.raise_reason(model)
                raise unknown_model(model)
            if loaded_with is not None and dict(parameters) == dict(loaded_with):
                return load_s, grew
            # Measured alone, and not the replica's first load: that one also pays the runtime's
            # one-time costs (the backend's libraries, a CUDA context), which no model frees.
            alone = len(self._reserved) == 1 and self.counters.loads > 0
            started = self._clock()
            try:
                grew = await self._meter.load(alone, self._runtime.load(model, parameters))
            except ServeAppError as exc:
                self._failures.record(model, exc)
                self.counters.unloads["failed"] += 1
                raise
            load_s = self._clock() - started
            loaded_with = parameters

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    # --- room -------------------------------------------------------------------------------

    def _fits(self, extra_models: int, extra_bytes: int) -> bool:
        models = len(self._resident) + len(self._reserved) + extra_models
        return self._within(models, self.resident_bytes() + sum(self._reserved.values()) + extra_bytes)

    def _within(self, models: int, used: int) -> bool:
        budget = self._budget
        return (budget.max_models is None or models <= budget.max_models) and (
            budget.memory_bytes is None or used <= budget.memory_bytes
        )

    async def _make_room(self, model: str, estimate: int) -> bool:
        """Reserve room for `model`: True when admitted (within the budget), False in the spare room."""
        sizes = {m: e.size_bytes for m, e in self._resident.items()}
        load_s = expected_load_s(model, estimate, self._load_s, sizes)
        patience = max(SPARE_WAIT_S, load_s)
        asked = self._clock()
        async with self._room:
            while True:
                if self._fits(1, estimate):
                    self._reserved["load", model] = estimate
                    return True
                if any(kind == "unload" for kind, _ in self._reserved):
                    # Room is being given back: decide once it is, else its bytes would be freed
                    # twice (by the unload and by evicting more models for them).
                    await self._wait_for_room()
                    continue
                victims = self._victims(1, estimate)
                spare_free = not self._spare_loading and all(e.admitted for e in self._resident.values())
                waited = not spare_free and self._clock() - asked >= patience
                newcomer = (model, load_s, estimate)
                if victims is not None and (waited or admits(self._frequencies, newcomer, victims)):
                    self._evict_later(victims, "evicted")
                    self._reserved["load", model] = estimate
                    return True
                if spare_free:
                    # The spare room is beyond a full budget: one that measured sizes overran goes
                    # back within it first (else this would wait for a release that may never come).
                    over = self._victims(0, 0)
                    if over is not None:
                        self._evict_later(over, "evicted")
                        self._reserved["load", model] = estimate
                        self._spare_loading.add(model)
                        return False
                # The spare room is taken: wait for it, a while at most where victims could go.
                await self._wait_for_room(patience if victims is not None else None)

    async def _wait_for_room(self, timeout_s: float | None = None) -> None:
        """Wait (holding `_room`) until a load, an unload or a release gives room back, or `timeout_s`."""
        self._room_waiters += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), timeout_s)
        finally:
            self._room_waiters -= 1

    async def _trim(self) -> None:
        """A load measured larger than its estimate: idle admitted models go (lowest priority first)
        until the admitted ones are within the budget again, or none is idle."""
        async with self._room:
            idle = sorted(
                ((m, e) for m, e in self._resident.items() if e.admitted and self._idle(m, e)),
                key=lambda item: item[1].priority,
            )
            chosen = []
            admitted = [e for e in self._resident.values() if e.admitted]
            models, used = len(admitted), sum(e.size_bytes for e in admitted)
            for name, entry in idle:
                if self._within(models, used):
                    break
                chosen.append((name, entry))
                models, used = models - 1, used - entry.size_bytes
            self._evict_later(chosen, "evicted")

    def _idle(self, model: str, entry: Resident) -> bool:
        """No request uses `model`, and none waits for it: a model just loaded is not idle until
        the requests that waited for its load have taken it (else loads of several models could
        evict each other's before use, round after round)."""
        return entry.in_flight == 0 and model not in self._waiting

    def _victims(self, models: int, estimate: int) -> list[tuple[str, Resident]] | None:
        """The idle models of lowest priority (one in the spare room first) whose eviction makes room
        for `models` more models of `estimate` bytes (none if it fits already); None if evicting
        every idle model would not."""
        idle = sorted(
            ((m, e) for m, e in self._resident.items() if self._idle(m, e)),
            key=lambda item: (item[1].admitted, item[1].priority),
        )
        chosen: list[tuple[str, Resident]] = []
        freed_models, freed_bytes = 0, 0
        for name, entry in idle:
            if self._fits(models - freed_models, estimate - freed_bytes):
                break
            chosen.append((name, entry))
            freed_models += 1
            freed_bytes += entry.size_bytes
        return chosen if self._fits(models - freed_models, estimate - freed_bytes) else None

    def _evict_later(self, victims: Iterable[tuple[str, Resident]], reason: str) -> None:
        """Decided (holding `_room`): the victims leave at once, their room stays reserved until
        their unloads, which run outside the room, are done."""
        for model, entry in victims:
            del self._resident[model]
            self._reserved["unload", model] = entry.size_bytes
            self._age = max(self._age, entry.priority)
            self.counters.unloads[reason] += 1
            self._background(self._unload_and_free(model, reason))

    async def _unload_and_free(self, model: str, reason: str) -> None:
        try:
            async with self._lock(model):
                await self._unload(model)
            logger.info("unloaded model '%s' (%s)", model, reason)
        except Exception:  # logged; its room is given back whatever happened
            logger.exception("unloading model '%s' (%s) failed", model, reason)
        finally:
            await self._meter.give_back()
            await self._free("unload", model)

    async def _unload(self, model: str) -> None:
        for listener in self._unload_listeners:
            listener(model)
        with contextlib.suppress(ModelNotFoundError):
            await self._runtime.unload(model)

    async def _free(self, kind: str, model: str) -> None:
        """A load or an unload of `model` is over: its reservation goes, and waiters look again."""
        async with self._room:
            self._reserved.pop((kind, model), None)
            if kind == "load":
                self._spare_loading.discard(model)
            self._room.notify_all()

    def _released(self, model: str, entry: Resident) -> None:
        """The last request of a model ended: a model in the spare room goes, and waiters look again."""
        self._background(self._after_release(model, entry))

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _after_release(self, model: str, entry: Resident) -> None:
        """A model in the spare room stays if it is now worth more than an admitted idle model
        (which goes in its place), else it goes."""
        async with self._room:
            if not entry.admitted and self._idle(model, entry) and self._resident.get(model) is entry:
                del self._resident[model]  # judged as a newcomer
                victims = self._victims(1, entry.size_bytes)
                self._resident[model] = entry
                displaced = max((v.priority for _, v in victims or []), default=0.0)
                if victims is not None and entry.priority > displaced:
                    self._evict_later(victims, "evicted")
                    entry.admitted = True
                else:
                    self._evict_later([(model, entry)], "evicted")
            self._room.notify_all()

    # --- idle unloads and control -----------------------------------------------------------

    def _start_idle_unloads(self) -> None:
        if self._budget.idle_unload_s is None or self._idle_task is not None:
            return
        self._idle_task = asyncio.get_running_loop().create_task(
            self._unload_idle(self._budget.idle_unload_s)
        )

    async def _unload_idle(self, idle_s: float) -> None:
        while True:
            await asyncio.sleep(min(idle_s / 4, 1.0))
            now = self._clock()
            async with self._room:
                idle = [
                    (model, entry)
                    for model, entry in self._resident.items()
                    if self._idle(model, entry) and now - entry.last_used >= idle_s
                ]
                self._evict_later(idle, "idle")

    async def reload(self, model: str) -> None:
        """The repository or a client changed `model`: load it again where it is resident (a load
        under way checks the deployment's parameters again when it ends)."""
        self._failures.forget(model)
        if model in self._resident:
            parameters = self._servable.parameters(model)
            async with self._lock(model):
                if parameters is not None and model in self._resident:
                    await self._runtime.load(model, parameters)

    async def drop(self, model: str) -> None:
        """A client unloaded `model` (or it left the repository): unload it here once its requests
        end (a load under way unloads it when it ends)."""
        self._failures.forget(model)
        async with self._room:
            entry = self._resident.pop(model, None)
            if entry is not None:
                self._reserved["unload", model] = entry.size_bytes
        if entry is not None:
            await self._unload_and_free(model, "unloaded")

    async def stop(self) -> None:
        tasks = [t for t in (self._idle_task, *self._releases, *self._loading.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        """The `serve_app` block's part: models loaded here, loads since the replica started, and
        how requests found their models (hits: resident; misses: loaded for them or refused)."""
        return {
            "loaded_models": sorted(self._resident),
            "model_loads": self.counters.loads,
            "model_hits": self.counters.hits,
            "model_misses": self.counters.misses,
            "loaded_bytes": self.resident_bytes(),
        }
