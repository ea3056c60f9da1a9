"""Serverless per model (configs/app.on_demand.yaml): 12 models, room for 3 on each of 2 replicas.

Models load on their first request, idle ones are evicted under closed-loop load without a failed
or wrong answer, HAProxy keeps each model's HTTP requests on one replica, concurrent first
requests load once, and a broken model, one larger than the budget and idle models are handled
as docs/placement.md says. Each replica's GET /v2 (`serve_app`: `loaded_models`, `model_loads`) is
read straight from its own port.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from devtools.processes import wait_for
from devtools.serve_configs import shipped
from serve_app.examples import write_sized_linear
from tests.conftest import reference
from tests.e2e.checks import json_request, replicas_answering
from tests.e2e.load import ClosedLoop
from tests.e2e.serve_run import Endpoint, ServeRun, endpoints, fixed_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MODELS = [f"m{i:02d}" for i in range(12)]
ROOM = 3
IDLE_S = 8
BUDGET = 64 * 2**20
ROWS = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)


@pytest.fixture(scope="module")
def repository(runtime: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(f"on-demand-{runtime}") / "repository"
    for seed, name in enumerate(MODELS):
        write_sized_linear(path, name, 256 * 2**10, seed)
    return path


@pytest.fixture(scope="module")
def expected(repository: Path) -> dict[str, np.ndarray]:
    return {name: reference(repository, name, ROWS)[0] for name in MODELS}


@pytest.fixture(scope="module")
def served_config(runtime: str, repository: Path) -> dict[str, Any]:
    """configs/app.on_demand.yaml on this machine: 2 replicas, room for 3 models each."""
    config = shipped("app.on_demand.yaml")
    app = config["applications"][0]
    app["args"].update(model_repository=str(repository), runtime=runtime)
    app["args"]["model_placement"].update(
        max_models_per_replica=ROOM, memory_budget_bytes=BUDGET, idle_unload_s=IDLE_S
    )
    app["deployments"][0].update(fixed_replicas(2))
    return config


def placement(endpoint: Endpoint) -> dict[str, Any]:
    return httpx.get(f"http://{endpoint.http}/v2", timeout=30).json()["serve_app"]


def infer(http: httpx.Client, model: str) -> httpx.Response:
    return http.post(f"/v2/models/{model}/infer", json=json_request(ROWS))


def outputs_of(response: httpx.Response) -> np.ndarray:
    output = response.json()["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def test_a_model_resident_nowhere_is_ready_and_described_without_a_load(served: ServeRun) -> None:
    _, *replicas = endpoints(served, 2)
    with httpx.Client(base_url=served.url, timeout=60) as http:
        assert http.get("/v2/models/m11/ready").status_code == 200
        metadata = http.get("/v2/models/m11").json()
        assert metadata["inputs"][0]["name"] == "input__0" and metadata["versions"] == ["1"]
        assert http.get("/v2/models/m11/config").json()["max_batch_size"] == 64
        rows = {row["name"]: row for row in http.post("/v2/repository/index", json={}).json()}
    assert set(rows) == set(MODELS) and all(row["state"] == "READY" for row in rows.values())
    assert all(placement(replica)["model_loads"] == 0 for replica in replicas)


def test_each_models_requests_stay_on_one_replica(served: ServeRun, expected: dict[str, np.ndarray]) -> None:
    _, *replicas = endpoints(served, 2)
    replicas_answering(served.url, 2)  # both in HAProxy's ring: the hash maps no model twice
    with httpx.Client(base_url=served.url, timeout=60) as http:
        for model in MODELS[:ROOM]:  # all three fit one replica, should the hash send them there
            for _ in range(10):
                response = infer(http, model)
                assert response.status_code == 200, response.text
                np.testing.assert_allclose(outputs_of(response), expected[model], rtol=1e-5, atol=1e-5)
    holders = [placement(replica)["loaded_models"] for replica in replicas]
    for model in MODELS[:ROOM]:
        assert sum(model in held for held in holders) == 1, holders


def test_concurrent_first_requests_load_once(served: ServeRun) -> None:
    _, replica, _ = endpoints(served, 2)
    model = next(m for m in reversed(MODELS) if m not in placement(replica)["loaded_models"])
    loads = placement(replica)["model_loads"]
    with httpx.Client(base_url=f"http://{replica.http}", timeout=60) as http, ThreadPoolExecutor(12) as pool:
        codes = set(pool.map(lambda _: infer(http, model).status_code, range(12)))
    assert codes == {200}
    assert placement(replica)["model_loads"] == loads + 1


def test_eviction_under_load_fails_no_request(served: ServeRun, expected: dict[str, np.ndarray]) -> None:
    """HTTP clients choose models at random among the 12; gRPC ones too, through the front port."""
    _, *replicas = endpoints(served, 2)
    loads_before = sum(placement(replica)["model_loads"] for replica in replicas)
    most_held = 0

    def send(http: httpx.Client, n: int) -> str:
        model = random.Random(n * 7919 + id(http)).choice(MODELS)
        response = infer(http, model)
        if response.status_code != 200:
            return f"{model}: {response.status_code} {response.text}"
        return (
            ""
            if np.allclose(outputs_of(response), expected[model], rtol=1e-5, atol=1e-5)
            else f"{model}: wrong"
        )

    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{served.config['grpc_options']['port']}")
    with ClosedLoop(served.url, send, clients=6) as load:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            most_held = max(most_held, *(len(placement(replica)["loaded_models"]) for replica in replicas))
            model = random.choice(MODELS)
            data = grpcclient.InferInput("input__0", list(ROWS.shape), "FP32")
            data.set_data_from_numpy(ROWS)
            result = grpc.infer(model, [data]).as_numpy("output__0")
            np.testing.assert_allclose(result, expected[model], rtol=1e-5, atol=1e-5)
    grpc.close()
    ok, failed = load.counts()
    loads = sum(placement(replica)["model_loads"] for replica in replicas) - loads_before
    print(f"\n{ok} requests, {failed} failed, {loads} loads; at most {most_held} models on a replica")
    assert failed == 0, load.failures[:10]
    assert loads > len(MODELS) - 2 * ROOM  # models came and went
    assert most_held <= ROOM + 1  # the budget, and one model in the spare room


def test_a_broken_model_is_answered_at_once_until_its_back_off(served: ServeRun, repository: Path) -> None:
    broken = repository / ".broken"
    shutil.copytree(repository / MODELS[0], broken)
    (broken / "1" / "model.pt").write_bytes(b"not TorchScript")
    broken.rename(repository / "broken")
    _, replica, _ = endpoints(served, 2)
    with httpx.Client(base_url=f"http://{replica.http}", timeout=60) as http:
        first = infer(http, "broken")
        loads = placement(replica)["model_loads"]
        again = infer(http, "broken")
        assert first.status_code == again.status_code == 503
        assert "broken" in first.json()["error"] and again.json()["error"] == first.json()["error"]
        assert placement(replica)["model_loads"] == loads
        rows = {row["name"]: row for row in http.post("/v2/repository/index", json={}).json()}
    assert rows["broken"]["state"] == "UNAVAILABLE" and rows["broken"]["reason"]


def test_a_model_larger_than_the_budget_is_refused_with_507(served: ServeRun, repository: Path) -> None:
    staged = repository / ".big"
    write_sized_linear(staged.parent, staged.name, BUDGET + 2**20, 99)
    staged.rename(repository / "big")
    _, *replicas = endpoints(served, 2)
    held = [placement(replica)["loaded_models"] for replica in replicas]
    with httpx.Client(base_url=served.url, timeout=60) as http:
        response = infer(http, "big")
    assert response.status_code == 507 and "memory budget" in response.json()["error"]
    assert [placement(replica)["loaded_models"] for replica in replicas] == held  # nothing evicted


def test_idle_models_are_unloaded(served: ServeRun) -> None:
    _, *replicas = endpoints(served, 2)
    wait_for(
        lambda: not any(placement(r)["loaded_models"] for r in replicas), 3 * IDLE_S + 30, "idle unloads"
    )
    print(json.dumps([placement(replica) for replica in replicas]))
