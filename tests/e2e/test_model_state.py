"""One deployment, one Triton: model control, repository changes and statistics apply to the whole
deployment (issue 20), end to end with 2 replicas on each runtime.

Every read is made through the front ports (HAProxy: HTTP and gRPC) and straight to each replica's
own HTTP and gRPC servers, so a replica that disagrees cannot hide behind the load balancer.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from devtools.processes import wait_for
from serve_app.examples import build_example_repository
from tests.e2e.checks import json_request
from tests.e2e.load import ClosedLoop
from tests.e2e.serve_run import Endpoint, ServeRun, app_config, endpoints, replica_endpoints

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPLICAS, MOST = 2, 3
ROWS = np.arange(32, dtype=np.float32).reshape(2, 16) / 32


@pytest.fixture(scope="module")
def repository(runtime: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples in a repository of this app's own: the tests add versions and models."""
    path = tmp_path_factory.mktemp(f"model-state-{runtime}") / "repository"
    build_example_repository(path)
    return path


@pytest.fixture(scope="module")
def served_config(runtime: str, repository: Path) -> dict[str, Any]:
    autoscaling = {
        "min_replicas": REPLICAS,
        "max_replicas": MOST,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3600,
        "look_back_period_s": 2,
        "metrics_interval_s": 0.5,
    }
    args = {"model_repository": str(repository), "runtime": runtime, "model_control": True}
    return app_config({**args, "repository_poll_s": 1}, {"autoscaling_config": autoscaling})


def ready_everywhere(links: list[Endpoint], model: str) -> set[bool]:
    """`model`'s readiness as every connection answers it, over HTTP and gRPC (the front ports
    four times each: HAProxy spreads them)."""
    answers = set()
    for link in links:
        times = 4 if link.name == "front" else 1
        http = httpclient.InferenceServerClient(link.http)
        grpc = grpcclient.InferenceServerClient(link.grpc)
        try:
            for _ in range(times):
                answers.add(http.is_model_ready(model))
                answers.add(grpc.is_model_ready(model))
        finally:
            http.close()
            grpc.close()
    return answers


def post(served: ServeRun, path: str, timeout_s: float = 300) -> httpx.Response:
    return httpx.post(served.url + path, json={}, timeout=timeout_s)


def success_count(stats: dict[str, Any]) -> int:
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def test_an_unload_and_a_load_are_seen_from_every_connection(served: ServeRun) -> None:
    links = endpoints(served, REPLICAS)
    assert post(served, "/v2/repository/models/int_ops/unload").status_code == 200
    assert ready_everywhere(links, "int_ops") == {False}
    grpc = grpcclient.InferenceServerClient(links[0].grpc)
    grpc.load_model("int_ops")  # through the other protocol
    grpc.close()
    assert ready_everywhere(links, "int_ops") == {True}


def test_statistics_and_the_index_are_the_deployments(served: ServeRun) -> None:
    links = endpoints(served, REPLICAS)
    http = httpclient.InferenceServerClient(links[0].http)
    before = success_count(http.get_inference_statistics("linear"))
    body = json_request(ROWS)
    with httpx.Client(base_url=served.url) as front:
        for _ in range(30):
            assert front.post("/v2/models/linear/infer", json=body).status_code == 200
    http.close()
    counts, indexes = [], []
    for link in links:
        http = httpclient.InferenceServerClient(link.http)
        grpc = grpcclient.InferenceServerClient(link.grpc)
        counts.append(success_count(http.get_inference_statistics("linear")))
        counts.append(success_count(grpc.get_inference_statistics("linear", as_json=True)))
        indexes.append(http.get_model_repository_index())
        http.close()
        grpc.close()
    # Triton counts a success after the response is sent: the last one may lag a moment.
    assert set(counts) == {before + 30}, counts
    assert all(index == indexes[0] for index in indexes), indexes
    assert {row["name"]: row["state"] for row in indexes[0]} == dict.fromkeys(
        ["image_classifier", "int_ops", "linear", "multi_io"], "READY"
    )


def test_a_replica_killed_after_an_unload_comes_back_without_the_model(served: ServeRun) -> None:
    endpoints(served, REPLICAS)
    assert post(served, "/v2/repository/models/multi_io/unload").status_code == 200
    before = replica_endpoints()
    victim = sorted(before)[0]
    os.kill(victim[0], signal.SIGKILL)

    def replaced() -> bool:
        now = replica_endpoints()
        return len(now) == REPLICAS and victim not in now

    wait_for(replaced, 180, "the killed replica's replacement listening")
    links = endpoints(served, REPLICAS)
    assert ready_everywhere(links, "multi_io") == {False}
    assert ready_everywhere(links, "linear") == {True}
    assert post(served, "/v2/repository/models/multi_io/load").status_code == 200
    assert ready_everywhere(links, "multi_io") == {True}


def test_a_scaled_up_replica_gets_the_current_set(served: ServeRun) -> None:
    endpoints(served, REPLICAS)
    assert post(served, "/v2/repository/models/multi_io/unload").status_code == 200
    body = json_request(ROWS)

    def send(http: httpx.Client, _: int) -> str:
        response = http.post("/v2/models/linear/infer", json=body)
        return "" if response.status_code == 200 else response.text

    with ClosedLoop(served.url, send, clients=12):
        links = endpoints(served, MOST)
    assert ready_everywhere(links, "multi_io") == {False}
    assert post(served, "/v2/repository/models/multi_io/load").status_code == 200
    assert ready_everywhere(links, "multi_io") == {True}


def test_a_new_version_rolls_out_under_load_without_a_failed_request(
    served: ServeRun, repository: Path
) -> None:
    links = endpoints(served, MOST)
    body = json_request(ROWS)

    def send(http: httpx.Client, _: int) -> str:
        response = http.post("/v2/models/linear/infer", json=body)
        return "" if response.status_code == 200 else f"{response.status_code} {response.text}"

    def serving_version(link: Endpoint) -> list[str]:
        return httpx.get(f"http://{link.http}/v2/models/linear", timeout=30).json()["versions"]

    with ClosedLoop(served.url, send, clients=8) as load:
        wait_for(lambda: load.counts()[0] > 50, 60, "load running")
        staged = repository / "linear" / ".2"  # written beside, then renamed: never seen half written
        shutil.copytree(repository / "linear" / "1", staged)
        staged.rename(repository / "linear" / "2")
        wait_for(
            lambda: all(serving_version(link) == ["2"] for link in links[1:]), 60, "version 2 everywhere"
        )
        ok_at_roll = load.counts()[0]
        wait_for(lambda: load.counts()[0] > ok_at_roll + 50, 60, "load after the roll")
    ok, failed = load.counts()
    print(f"\n{ok} requests during the version roll, {failed} failed: {load.failures[:5]}")
    assert failed == 0, load.failures[:10]


def test_a_load_of_a_missing_or_broken_model(served: ServeRun, repository: Path) -> None:
    links = endpoints(served, MOST)
    index = post(served, "/v2/repository/index").json()
    response = post(served, "/v2/repository/models/nowhere/load")
    assert response.status_code == 400 and "nowhere" in response.json()["error"]
    assert post(served, "/v2/repository/index").json() == index  # changed nothing

    broken = repository / ".broken"
    shutil.copytree(repository / "linear", broken)
    (broken / "config.pbtxt").write_text("garbage {")
    broken.rename(repository / "broken")  # the poll finds it and tries: it fails on every replica
    try:
        response = post(served, "/v2/repository/models/broken/load")
        assert response.status_code == 503
        error = response.json()["error"]
        assert error.startswith("failed to load 'broken'") and f"failed on {MOST} of {MOST} replicas" in error
        assert error.count("SERVE_REPLICA::") == MOST  # each replica named
        assert ready_everywhere(links, "linear") == {True}  # nothing else held up
    finally:
        shutil.rmtree(repository / "broken")


def test_a_load_and_an_unload_at_once_end_alike_everywhere(served: ServeRun) -> None:
    links = endpoints(served, MOST)

    def change(operation: str) -> int:
        return post(served, f"/v2/repository/models/image_classifier/{operation}").status_code

    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(change, ("load", "unload")))
        assert answers == [200, 200]
        assert len(ready_everywhere(links, "image_classifier")) == 1  # one state, whichever won
    assert post(served, "/v2/repository/models/image_classifier/load").status_code == 200


def test_the_state_holder_killed_during_a_load(served: ServeRun) -> None:
    links = endpoints(served, MOST)
    assert post(served, "/v2/repository/models/int_ops/unload").status_code == 200
    (holder,) = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("::model_state")
    ]
    outcome: dict[str, httpx.Response] = {}
    load = threading.Thread(
        target=lambda: outcome.update(response=post(served, "/v2/repository/models/int_ops/load"))
    )
    load.start()
    ray.kill(ray.get_actor(holder["name"], namespace=holder["namespace"]))
    load.join()
    assert outcome["response"].status_code == 200, outcome["response"].text
    assert ready_everywhere(links, "int_ops") == {True}
    assert post(served, "/v2/repository/models/int_ops/unload").status_code == 200  # the new holder
    assert ready_everywhere(links, "int_ops") == {False}
    assert post(served, "/v2/repository/models/int_ops/load").status_code == 200
