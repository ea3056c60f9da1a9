"""The deployment's model state with its holder and replicas in one process (no Ray).

The replicas' runtimes are stand-ins that record what they were asked to do, so that every
replica's view can be read; the real runtimes are exercised end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from serve_app.errors import InvalidInputError, ModelNotFoundError, ModelNotReadyError
from serve_app.model_state.desired import Applied, DesiredState, Target
from serve_app.model_state.holder import InProcessHolder, MemoryStore, ModelStateHolder, ReplicaRecord
from serve_app.model_state.merge import merge_index, merge_statistics
from serve_app.model_state.replica import DeploymentModels
from serve_app.runtimes.base import LoadParameters, ModelState, Wanted, everything

pytestmark = pytest.mark.anyio


class StandInRuntime:
    """A runtime over a repository of model name → whether it loads on this replica."""

    name = "stand-in"

    def __init__(self, repository: dict[str, bool]) -> None:
        self.repository = repository
        self.loaded: set[str] = set()
        self.loads: list[str] = []
        self.parameters: dict[str, dict[str, str]] = {}  # the parameters each model loaded with
        self.requests: dict[str, int] = {}
        self.release_load = asyncio.Event()
        self.release_load.set()

    async def start(self, wanted: Wanted = everything) -> None:
        for model, loads in self.repository.items():
            parameters = wanted(model)
            if loads and parameters is not None:
                self.loaded.add(model)
                self.parameters[model] = dict(parameters)

    async def in_repository(self, model: str) -> bool:
        return model in self.repository

    async def load(self, model: str, parameters: LoadParameters) -> None:
        self.loads.append(model)
        await self.release_load.wait()
        if model not in self.repository:
            raise ModelNotFoundError(f"no directory '{model}' in the model repository")
        if not self.repository[model]:
            raise ModelNotReadyError(f"failed to load '{model}': broken file")
        self.loaded.add(model)
        self.parameters[model] = dict(parameters)

    async def unload(self, model: str) -> None:
        if model not in self.loaded:
            raise ModelNotFoundError(f"unknown model '{model}'")
        self.loaded.discard(model)

    def index(self) -> list[ModelState]:
        return [
            ModelState(m, "1", "READY")
            if m in self.loaded
            else ModelState(m, None, "UNAVAILABLE", "unloaded")
            for m in sorted(self.repository)
        ]

    def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        if model is not None and model not in self.loaded:
            raise ModelNotFoundError(f"unknown model '{model}'")
        names = [model] if model else sorted(self.loaded)
        return {"model_stats": [_stats(name, self.requests.get(name, 0)) for name in names]}


def _stats(name: str, count: int, last: int = 0) -> dict[str, Any]:
    duration = {"count": count, "ns": 1000 * count}
    return {
        "name": name,
        "version": "1",
        "last_inference": last,
        "inference_count": count,
        "execution_count": count,
        "inference_stats": {
            "success": dict(duration),
            "fail": {"count": 0, "ns": 0},
            "queue": dict(duration),
        },
        "batch_stats": [{"batch_size": 1, "compute_infer": dict(duration)}],
    }


class Deployment:
    """A holder and its replicas, started and stopped together."""

    def __init__(self, store: MemoryStore | None = None, alive: set[str] | None = None) -> None:
        self.store = store or MemoryStore()
        self.alive = alive

        async def liveness(record: ReplicaRecord) -> bool:
            return self.alive is None or record.name in self.alive

        self.holder = ModelStateHolder(self.store, liveness)
        self.replicas: list[DeploymentModels] = []

    async def add(self, name: str, repository: dict[str, bool]) -> DeploymentModels:
        state = await self.holder.snapshot()
        runtime = StandInRuntime(repository)
        await runtime.start(state.load_parameters)
        replica = DeploymentModels(runtime, InProcessHolder(self.holder), name)
        await replica.join(state)
        self.replicas.append(replica)
        return replica

    def runtime(self, index: int) -> StandInRuntime:
        return self.replicas[index]._runtime  # type: ignore[return-value]

    async def stop(self) -> None:
        for replica in self.replicas:
            await replica.stop()


REPOSITORY = {"addsub": True, "linear": True}


@pytest.fixture
async def two() -> Any:
    deployment = Deployment()
    await deployment.add("r1", dict(REPOSITORY))
    await deployment.add("r2", dict(REPOSITORY))
    yield deployment
    await deployment.stop()


async def test_an_unload_through_one_replica_applies_to_every_replica_before_it_answers(
    two: Deployment,
) -> None:
    with anyio.fail_after(10):
        await two.replicas[0].unload("addsub")
    assert [two.runtime(i).loaded for i in (0, 1)] == [{"linear"}, {"linear"}]
    with anyio.fail_after(10):
        await two.replicas[1].load("addsub", {})
    assert [two.runtime(i).loaded for i in (0, 1)] == [set(REPOSITORY)] * 2


async def test_a_replica_that_starts_later_starts_with_the_current_set(two: Deployment) -> None:
    await two.replicas[0].unload("addsub")
    late = await two.add("r3", dict(REPOSITORY))
    assert two.runtime(2).loaded == {"linear"}
    with anyio.fail_after(10):
        await late.load("addsub", {})
    assert all(two.runtime(i).loaded == set(REPOSITORY) for i in range(3))


OVERRIDE = {"config": '{"max_batch_size": 16}'}


async def test_a_loads_config_override_applies_on_every_replica_and_on_later_ones(two: Deployment) -> None:
    with anyio.fail_after(10):
        await two.replicas[0].load("linear", OVERRIDE)
    assert [two.runtime(i).parameters["linear"] for i in (0, 1)] == [OVERRIDE] * 2
    late = await two.add("r3", dict(REPOSITORY))
    assert two.runtime(2).parameters == {"linear": OVERRIDE, "addsub": {}}
    successor = ModelStateHolder(two.store, two.holder._alive)  # the override outlives the holder
    assert successor._state.load_parameters("linear") == OVERRIDE
    with anyio.fail_after(10):
        await late.load("linear", {})  # a load without one reads config.pbtxt again, as in Triton
    assert all(two.runtime(i).parameters["linear"] == {} for i in range(3))


async def test_a_load_that_fails_on_one_replica_names_it_and_its_reason() -> None:
    deployment = Deployment()
    await deployment.add("r1", dict(REPOSITORY))
    await deployment.add("r2", {**REPOSITORY, "linear": False})
    try:
        with pytest.raises(ModelNotReadyError) as raised:
            await deployment.replicas[0].load("linear", {})
        message = str(raised.value)
        assert message.startswith("failed to load 'linear': broken file")
        assert "r2" in message and "r1" not in message and "1 of 2 replicas" in message
        assert "linear" in deployment.runtime(0).loaded
    finally:
        await deployment.stop()


async def test_a_load_of_a_model_not_in_the_repository_is_refused_and_changes_nothing(
    two: Deployment,
) -> None:
    before = two.holder._state
    with pytest.raises(
        InvalidInputError,
        match=r"^failed to load 'missing', failed to poll from model repository: no model directory",
    ):
        await two.replicas[0].load("missing", {})
    assert two.holder._state is before


async def test_load_and_unload_at_once_end_in_the_later_ones_state(two: Deployment) -> None:
    for index in (0, 1):
        two.runtime(index).release_load.clear()
    with anyio.fail_after(10):
        load = asyncio.create_task(two.replicas[0].load("addsub", {}))
        await asyncio.sleep(0.05)
        unload = asyncio.create_task(two.replicas[1].unload("addsub"))
        await asyncio.sleep(0.05)
        for index in (0, 1):
            two.runtime(index).release_load.set()
        await asyncio.gather(load, unload)
    assert [two.runtime(i).loaded for i in (0, 1)] == [{"linear"}, {"linear"}]
    assert two.holder._state.targets["addsub"] == Target(False, 2)


async def test_statistics_and_index_cover_every_replica(two: Deployment) -> None:
    two.runtime(0).requests["linear"] = 10
    two.runtime(1).requests["linear"] = 20
    with anyio.fail_after(10):
        stats = await two.replicas[0].statistics("linear", None)
    (linear,) = stats["model_stats"]
    assert linear["inference_count"] == 30
    assert linear["inference_stats"]["success"] == {"count": 30, "ns": 30_000}
    assert linear["batch_stats"] == [{"batch_size": 1, "compute_infer": {"count": 30, "ns": 30_000}}]
    with pytest.raises(ModelNotFoundError):
        await two.replicas[1].statistics("nonexistent", None)
    two.runtime(1).loaded.discard("linear")  # as if its load had failed there
    rows = {row["name"]: row for row in await two.replicas[1].index()}
    assert rows["addsub"] == {"name": "addsub", "version": "1", "state": "READY", "reason": ""}
    assert rows["linear"]["state"] == "UNAVAILABLE"
    assert rows["linear"]["replicas"] == {"r1": "READY", "r2": "UNAVAILABLE"}
    assert rows["linear"]["reason"].startswith("READY on 1 of 2 replicas; r2: UNAVAILABLE: unloaded")


async def test_a_replica_that_died_is_not_waited_for() -> None:
    deployment = Deployment(alive={"r1", "r2"})
    await deployment.add("r1", dict(REPOSITORY))
    dead = await deployment.add("r2", dict(REPOSITORY))
    await dead.stop()  # stops following, but never said goodbye: as a killed replica
    deployment.replicas.remove(dead)
    deployment.holder._replicas["r2"] = ReplicaRecord("r2", "")  # it is still registered
    deployment.alive = {"r1"}
    try:
        with anyio.fail_after(10):
            await deployment.replicas[0].unload("addsub")
        assert "r2" not in deployment.holder._replicas
    finally:
        await deployment.stop()


async def test_a_new_holder_resumes_from_the_store(two: Deployment) -> None:
    """The state and the replicas to wait for outlive the holder; each replica registers again (a
    new holder asks it to), and a retried request is waited for, not made again."""
    change = "change-1"
    await two.holder.apply("addsub", False, 10, None, change)
    successor = ModelStateHolder(two.store, two.holder._alive)
    assert successor._state == two.holder._state
    assert set(successor._replicas) == {"r1", "r2"}
    assert all(record.applied is None for record in successor._replicas.values())
    assert await successor.changes("r1", 0, 0.01) is None  # register again, please
    for name in ("r1", "r2"):
        await successor.register(name, "", dict(two.holder._replicas[name].applied or {}))
    with anyio.fail_after(5):
        outcomes = await successor.apply("addsub", False, 10, None, change)  # the retry
    assert outcomes == {"r1": "", "r2": ""}
    assert successor._state == two.holder._state  # not applied twice


async def test_a_busy_holder_still_drops_a_replica_that_died() -> None:
    """Reports and answers keep arriving; the wait for a dead replica still ends in a second."""
    alive = {"r1", "r2"}

    async def liveness(record: ReplicaRecord) -> bool:
        return record.name in alive

    holder = ModelStateHolder(MemoryStore(), liveness)
    await holder.register("r1", "", {})
    await holder.register("r2", "", {})
    alive.discard("r2")

    async def chatter() -> None:
        while True:
            await holder.report("r1", "other", Applied(1))
            await asyncio.sleep(0.1)

    noise = asyncio.create_task(chatter())
    try:
        with anyio.fail_after(5):
            applying = asyncio.create_task(holder.apply("m", False, 30))
            await asyncio.sleep(0.05)
            await holder.report("r1", "m", Applied(1))
            assert await applying == {"r1": ""}
    finally:
        noise.cancel()


async def test_repository_changes_become_loads_reloads_and_unloads() -> None:
    holder = ModelStateHolder(MemoryStore(), lambda record: asyncio.sleep(0, True))
    holder._fingerprints = {"a": "1", "b": "1", "c": "1"}
    await holder.apply("c", False, 1)  # unloaded by a client before its files change
    assert holder.apply_repository({"a": "2", "b": "1", "c": "2", "d": "1"}) == ["a", "d"]
    assert holder._state.targets == {"a": Target(True, 1), "c": Target(False, 1), "d": Target(True, 1)}
    assert holder.apply_repository({"b": "1", "c": "2", "d": "1"}) == ["a"]
    assert not holder._state.wants("a")


def test_desired_state_round_trips_through_json() -> None:
    state = DesiredState().with_target("a", False).with_target("b", True).with_target("a", True, OVERRIDE)
    assert state.epoch == 3 and state.targets["a"] == Target(True, 2, tuple(OVERRIDE.items()))
    assert DesiredState.from_json(state.as_json()) == state
    assert (state.load_parameters("a"), state.load_parameters("b"), state.load_parameters("new")) == (
        OVERRIDE,
        {},
        {},
    )
    assert DesiredState().with_target("a", False).load_parameters("a") is None
    # A state kept before loads had parameters: two fields per target.
    assert DesiredState.from_json({"epoch": 1, "targets": {"a": [True, 1]}}).targets["a"] == Target(True, 1)


def test_statistics_add_up_by_version_and_batch_size() -> None:
    first = {"model_stats": [_stats("m", 2, last=5), _stats("n", 1)]}
    second = {"model_stats": [_stats("m", 3, last=9)]}
    second["model_stats"][0]["batch_stats"].append({"batch_size": 4, "compute_infer": {"count": 1, "ns": 7}})
    merged = merge_statistics([first, second])["model_stats"]
    assert [(s["name"], s["inference_count"], s["last_inference"]) for s in merged] == [
        ("m", 5, 9),
        ("n", 1, 0),
    ]
    assert merged[0]["batch_stats"] == [
        {"batch_size": 1, "compute_infer": {"count": 5, "ns": 5000}},
        {"batch_size": 4, "compute_infer": {"count": 1, "ns": 7}},
    ]


def test_an_index_that_agrees_is_passed_through() -> None:
    rows = [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
    assert merge_index({"r1": rows, "r2": rows}) == rows
