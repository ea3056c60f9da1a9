"""A bounded soak: mixed traffic for SERVE_APP_SOAK_S seconds (60 in CI), no errors, flat memory.

configs/app.yaml's request path (HAProxy) with one replica of the Triton runtime (the torch
runtime where Triton is not installed). Closed-loop clients cycle through JSON and binary
infers of every example model (each answer checked against the TorchScript file run
directly), metadata/config/stats/index reads and a few bad requests, which must get their
4xx with a JSON error. Asserted: 0 failures, and the replica's RSS (/proc) grows less than
10 % from the end of the warm-up (the first quarter) to the end. The 10-minute run:
`SERVE_APP_SOAK_S=600 python -m pytest tests/reliability/test_soak.py -s`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import np_to_triton_dtype

from devtools.processes import rss_bytes
from tests.conftest import reference
from tests.e2e.checks import json_request
from tests.e2e.load import ClosedLoop, Send
from tests.e2e.serve_run import (
    RUNTIMES,
    ServeRun,
    app_config,
    fixed_replicas,
    replica_processes,
    wait_for_replica_processes,
    wait_for_replicas,
)

SOAK_S = float(os.environ.get("SERVE_APP_SOAK_S", "60"))
# Allocator pools and caches fill for minutes before RSS levels off (10-minute run: +10 % in the
# first 150 s, +2 % after): growth is measured from the end of the first quarter (15 s in CI).
WARM_UP_S = max(min(15.0, SOAK_S / 2), SOAK_S / 4)
CLIENTS = 8
MAX_RSS_GROWTH = 0.10
RUNTIME = os.environ.get("SERVE_APP_SOAK_RUNTIME", RUNTIMES[-1])  # triton where installed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(SOAK_S) + 240)]


def json_infer(model: str, inputs: dict[str, np.ndarray], expected: list[np.ndarray]) -> Send:
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": k,
                    "shape": list(v.shape),
                    "datatype": np_to_triton_dtype(v.dtype),
                    "data": v.ravel().tolist(),
                }
                for k, v in inputs.items()
            ]
        }
    )

    def send(http: httpx.Client, _: int) -> str:
        response = http.post(
            f"/v2/models/{model}/infer", content=body, headers={"Content-Type": "application/json"}
        )
        if response.status_code != 200:
            return f"{model} JSON: HTTP {response.status_code} {response.text[:200]}"
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        got = [np.asarray(outputs[f"output__{i}"]["data"]).reshape(e.shape) for i, e in enumerate(expected)]
        return (
            ""
            if all(np.allclose(g, e, atol=1e-5) for g, e in zip(got, expected, strict=True))
            else f"{model} JSON: wrong"
        )

    return send


def binary_infer(
    model: str, inputs: dict[str, np.ndarray], outputs: list[str], expected: list[np.ndarray]
) -> Send:
    """The binary tensor extension, built and parsed by tritonclient's own codec."""
    tensors = []
    for name, array in inputs.items():
        tensor = triton_http.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    wanted = [triton_http.InferRequestedOutput(name, binary_data=True) for name in outputs]
    body, json_size = triton_http.InferenceServerClient.generate_request_body(tensors, outputs=wanted)
    headers = {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}

    def send(http: httpx.Client, _: int) -> str:
        response = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        if response.status_code != 200:
            return f"{model} binary: HTTP {response.status_code} {response.text[:200]}"
        length = response.headers.get("Inference-Header-Content-Length")
        result = triton_http.InferenceServerClient.parse_response_body(
            response.content, header_length=int(length) if length else None
        )
        got = [result.as_numpy(name) for name in outputs]
        ok = all(
            g is not None and g.shape == e.shape and np.allclose(g, e, atol=1e-5)
            for g, e in zip(got, expected, strict=True)
        )
        return "" if ok else f"{model} binary: wrong"

    return send


def read(method: str, path: str) -> Send:
    def send(http: httpx.Client, _: int) -> str:
        response = http.request(method, path, json={} if method == "POST" else None)
        return "" if response.status_code == 200 else f"{method} {path}: HTTP {response.status_code}"

    return send


def bad(status: int, method: str, path: str, body: bytes = b"") -> Send:
    """A bad request: its 4xx status with Triton's {"error": ...} body is the right answer."""

    def send(http: httpx.Client, _: int) -> str:
        response = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
        error = response.json().get("error") if response.content.startswith(b"{") else None
        if response.status_code != status or not error:
            return f"bad {method} {path}: HTTP {response.status_code} (want {status}) {response.text[:120]}"
        return ""

    return send


def traffic(repository: Path) -> list[Send]:
    """One cycle of the mix: 12 infers (JSON and binary, every model), 5 reads, 3 bad requests."""
    rng = np.random.default_rng(0)
    rows = rng.random((4, 16), dtype=np.float32)
    image = rng.random((1, 3, 224, 224), dtype=np.float32)
    x, scale = rng.random((2, 7), dtype=np.float32), np.array([[2.0], [0.5]], dtype=np.float32)
    ints = np.array([[1, -2, 3], [-4, 5, -6]], dtype=np.int32)
    linear = reference(repository, "linear", rows)
    image_out = reference(repository, "image_classifier", image)
    multi_out = reference(repository, "multi_io", x, scale)
    int_out = reference(repository, "int_ops", ints)
    infers = [
        json_infer("linear", {"input__0": rows}, linear),
        binary_infer("linear", {"input__0": rows}, ["output__0"], linear),
        binary_infer("image_classifier", {"input__0": image}, ["output__0"], image_out),
        json_infer("multi_io", {"x": x, "scale": scale}, multi_out),
        binary_infer("multi_io", {"x": x, "scale": scale}, ["output__0", "output__1"], multi_out),
        binary_infer("int_ops", {"INPUT__0": ints}, ["OUTPUT__0", "OUTPUT__1"], int_out),
    ]
    reads = [
        read("GET", "/v2"),
        read("GET", "/v2/health/ready"),
        read("GET", "/v2/models/image_classifier"),
        read("GET", "/v2/models/multi_io/config"),
        read("GET", "/v2/models/linear/stats"),
        read("POST", "/v2/repository/index"),
    ]
    wrong_shape = orjson.dumps(json_request(np.zeros((2, 15), np.float32)))
    bads = [
        bad(404, "POST", "/v2/models/no_such_model/infer", b'{"inputs": []}'),
        bad(400, "POST", "/v2/models/linear/infer", wrong_shape),
        bad(400, "POST", "/v2/models/linear/infer", b'{"inputs": [ oops'),
    ]
    return [*infers, reads[0], *infers, *reads[1:], *bads]


def test_soak_mixed_traffic(ray_address: str, example_repository: Path, tmp_path: Path) -> None:
    cycle = traffic(example_repository)
    calls = [0] * len(cycle)

    def send(http: httpx.Client, n: int) -> str:
        index = (n + id(http)) % len(cycle)  # threads start at different points of the cycle
        calls[index] += 1
        return cycle[index](http, n)

    config = app_config({"model_repository": str(example_repository), "runtime": RUNTIME}, fixed_replicas(1))
    with ServeRun(config, tmp_path, address=ray_address) as run:
        wait_for_replicas({"RUNNING": 1}, 120)
        # The one replica's process (an earlier app's may still be exiting).
        replica = wait_for_replica_processes(1)
        ((pid, _),) = replica
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        with ClosedLoop(run.url, send, clients=CLIENTS) as load:
            while (elapsed := time.monotonic() - started) < SOAK_S:
                samples.append((elapsed, rss_bytes(pid)))
                time.sleep(1.0)
            samples.append((time.monotonic() - started, rss_bytes(pid)))
        ok, failed = load.counts()
        assert replica_processes(os.getpid()) == replica, "the replica was replaced during the soak"

    warm = next(rss for t, rss in samples if t >= WARM_UP_S)
    end = samples[-1][1]
    growth = (end - warm) / warm
    peak = max(rss for _, rss in samples)
    print(
        f"\nsoak ({RUNTIME} runtime, 1 replica, {CLIENTS} clients, {SOAK_S:.0f} s): {ok} ok, {failed} failed "
        f"({ok / SOAK_S:.0f} req/s); replica RSS {warm / 2**20:.0f} MiB after the {WARM_UP_S:.0f} s warm-up "
        f"→ {end / 2**20:.0f} MiB at the end ({growth:+.1%}; peak {peak / 2**20:.0f} MiB); requests per kind "
        f"{calls}"
    )
    step = max(1, len(samples) // 12)
    timeline = ", ".join(f"{t:.0f} s: {rss / 2**20:.0f}" for t, rss in samples[::step])
    print(f"  RSS (MiB): {timeline}")
    for _, error in load.failures[:10]:
        print(f"  {error}")
    assert failed == 0, load.failures[:10]
    assert min(calls) > 0
    assert growth < MAX_RSS_GROWTH, (
        f"replica RSS grew {growth:.1%} after the {WARM_UP_S:.0f} s warm-up (MiB: {timeline})"
    )
