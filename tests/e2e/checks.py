"""What the e2e and reliability tests check a served app with: outputs against the TorchScript
files run directly in torch (tests.conftest.reference), the example models' request bodies, and
Triton's error shape."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from devtools.processes import http_get, http_post
from serve_app.examples import EXAMPLES
from tests.conftest import reference
from tests.e2e.serve_run import ServeRun

# The models of the example repository (serve_app.examples) every e2e app serves unless it says otherwise.
EXAMPLE_MODELS = frozenset(EXAMPLES)
# Max abs difference between served outputs and the TorchScript file run directly.
TOLERANCE = 1e-5


def assert_matches(actual: np.ndarray | None, expected: np.ndarray) -> None:
    """Same shape and dtype as the TorchScript reference; values within TOLERANCE."""
    assert actual is not None, "output missing from the response"
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if expected.dtype == np.bool_:
        np.testing.assert_array_equal(actual, expected)
    else:
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        assert diff.max(initial=0.0) <= TOLERANCE, f"max abs diff {diff.max()}"


def runtime_of(run: ServeRun) -> str:
    return run.config["applications"][0]["args"]["runtime"]


def repository_of(run: ServeRun) -> Path:
    """The repository the app serves (a relative one is relative to where `serve run` runs)."""
    if run.local_copy is not None:
        return run.local_copy
    return run.workdir / run.config["applications"][0]["args"]["model_repository"]


def json_request(rows: np.ndarray) -> dict[str, Any]:
    """A JSON request body of one FP32 `input__0`: `rows` (of `linear`, or a wrong shape of it)."""
    tensor = {
        "name": "input__0",
        "datatype": "FP32",
        "shape": list(rows.shape),
        "data": rows.ravel().tolist(),
    }
    return {"inputs": [tensor]}


def linear_body(batch: int = 2) -> tuple[dict[str, Any], np.ndarray]:
    """A JSON request of `linear` (16 → 4) and its input rows."""
    data = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) / 10
    return json_request(data), data


def infer_json(url: str, model: str, rows: np.ndarray) -> np.ndarray:
    """`rows` as `input__0` → first output, over plain JSON (no tritonclient in the way)."""
    body = json.dumps(json_request(rows)).encode()
    status, answer = http_post(f"{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    assert status == 200, answer[:500]
    output = json.loads(answer)["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def assert_still_serving(http: httpx.Client, repository: Path) -> None:
    """A good request after a bad one: the replica is alive and still right."""
    body, data = linear_body()
    response = http.post("/v2/models/linear/infer", json=body)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    (expected,) = reference(repository, "linear", data)
    assert_matches(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]), expected)


def assert_error(response: httpx.Response, status: int) -> str:
    """`status` with Triton's `{"error": "<message>"}` JSON body; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


def replicas_answering(url: str, count: int, timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """Replica id → the `serve_app` block of its GET /v2 answer, asked until `count` replicas have
    answered or `timeout_s` has passed. Concurrent requests: HAProxy balances by least
    connections, so sequential ones may all find the same idle replica."""

    def one(_: int) -> dict[str, Any] | None:
        status, body = http_get(url + "/v2", timeout=30)
        return json.loads(body)["serve_app"] if status == 200 else None

    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(8) as pool:
        while len(seen) < count and time.monotonic() < deadline:
            seen.update((block["replica"], block) for block in pool.map(one, range(32)) if block)
    return seen
