"""Triton's HTTP API over a real `serve run` of the example repository.

Clients are `tritonclient.http`, unchanged, and plain HTTP for the error statuses.
Every output is compared with running the model's TorchScript file directly in torch.
Runtime-agnostic: the `served` fixture is parametrised by runtime.
"""

from __future__ import annotations

import socket
from http.client import HTTPResponse
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from devtools.processes import http_get
from serve_app.dataplane import RUNTIME_EXTENSIONS, SERVED_EXTENSIONS
from tests.conftest import example_cases, reference
from tests.e2e.checks import (
    EXAMPLE_MODELS,
    assert_error,
    assert_matches,
    assert_still_serving,
    repository_of,
    runtime_of,
)
from tests.e2e.serve_run import ServeRun

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# model → (max_batch_size, inputs, outputs) as (name, datatype, dims without the batch dim)
SIGNATURES: dict[str, tuple[int, list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]] = {
    "image_classifier": (8, [("input__0", "FP32", [3, 224, 224])], [("output__0", "FP32", [10])]),
    "multi_io": (
        4,
        [("x", "FP32", [-1]), ("scale", "FP32", [1])],
        [("output__0", "FP32", [-1]), ("output__1", "FP32", [1])],
    ),
    "linear": (64, [("input__0", "FP32", [16])], [("output__0", "FP32", [4])]),
    "int_ops": (
        0,
        [("INPUT__0", "INT32", [2, 3])],
        [("OUTPUT__0", "BOOL", [2, 3]), ("OUTPUT__1", "INT64", [2, 3])],
    ),
}


# --- helpers -----------------------------------------------------------------------------


def infer_input(name: str, array: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


# --- server and model endpoints ------------------------------------------------------------


def test_health(client: httpclient.InferenceServerClient, served: ServeRun) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert http_get(served.url + "/v2/health/live", timeout=30)[0] == 200
    assert http_get(served.url + "/v2/health/ready", timeout=30)[0] == 200


def test_server_metadata(client: httpclient.InferenceServerClient, served: ServeRun) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "triton"  # on both runtimes, as clients read it
    assert metadata["version"]
    honoured = list(RUNTIME_EXTENSIONS) if runtime_of(served) == "triton" else []
    assert metadata["extensions"] == [*SERVED_EXTENSIONS, *honoured]
    assert metadata["serve_app"]["runtime"] == runtime_of(served)


@pytest.mark.parametrize("model", sorted(SIGNATURES))
def test_model_metadata(client: httpclient.InferenceServerClient, model: str) -> None:
    max_batch_size, inputs, outputs = SIGNATURES[model]
    batch = [-1] if max_batch_size else []

    def expected(tensors: list[tuple[str, str, list[int]]]) -> list[tuple[str, str, list[int]]]:
        return [(name, datatype, [*batch, *dims]) for name, datatype, dims in tensors]

    def actual(tensors: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
        return [(t["name"], t["datatype"], list(t["shape"])) for t in tensors]

    for version in ("", "1"):
        metadata = client.get_model_metadata(model, version)
        assert metadata["name"] == model
        assert metadata["versions"] == ["1"]
        assert actual(metadata["inputs"]) == expected(inputs)
        assert actual(metadata["outputs"]) == expected(outputs)


@pytest.mark.parametrize("model", sorted(SIGNATURES))
def test_model_config(client: httpclient.InferenceServerClient, model: str) -> None:
    max_batch_size, inputs, outputs = SIGNATURES[model]
    config = client.get_model_config(model)
    assert config["name"] == model
    assert config.get("max_batch_size", 0) == max_batch_size

    def tensors(key: str) -> list[tuple[str, str, list[int]]]:
        return [(t["name"], t["data_type"], list(t["dims"])) for t in config[key]]

    assert tensors("input") == [(n, f"TYPE_{d}", dims) for n, d, dims in inputs]
    assert tensors("output") == [(n, f"TYPE_{d}", dims) for n, d, dims in outputs]
    if max_batch_size:
        assert "dynamic_batching" in config
    assert client.get_model_config(model, "1")["name"] == model


def test_repository_index(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    index = client.get_model_repository_index()
    assert {row["name"] for row in index} == EXAMPLE_MODELS
    for row in index:
        assert row["state"] == "READY", row
        assert row["version"] == "1", row
    ready_only = http.post("/v2/repository/index", json={"ready": True})
    assert ready_only.status_code == 200
    assert {row["name"] for row in ready_only.json()} == EXAMPLE_MODELS


def test_model_ready(client: httpclient.InferenceServerClient) -> None:
    for model in EXAMPLE_MODELS:
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, "1")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("linear", "7")


# --- inference -----------------------------------------------------------------------------

BINARY_MODES = [
    pytest.param(True, True, id="binary-in-binary-out"),
    pytest.param(False, False, id="json-in-json-out"),
    pytest.param(True, False, id="binary-in-json-out"),
    pytest.param(False, True, id="json-in-binary-out"),
]
# The example models but linear (its batches: below) in every mode; the image only all binary or
# all JSON (a JSON image is megabytes).
INFER_CASES = [
    pytest.param(model, *mode.values, id=f"{model}-{mode.id}")
    for model in ("image_classifier", "multi_io", "int_ops")
    for mode in BINARY_MODES
    if model != "image_classifier" or mode in BINARY_MODES[:2]
]


@pytest.mark.parametrize(("model", "binary_in", "binary_out"), INFER_CASES)
def test_infer(
    client: httpclient.InferenceServerClient,
    served: ServeRun,
    rng: np.random.Generator,
    model: str,
    binary_in: bool,
    binary_out: bool,
) -> None:
    """Every output named, each as binary data or JSON as asked; the request id comes back."""
    inputs, names = example_cases(rng)[model]
    result = client.infer(
        model,
        [infer_input(name, array, binary_in) for name, array in inputs.items()],
        outputs=[httpclient.InferRequestedOutput(name, binary_data=binary_out) for name in names],
        request_id=f"{model}-42",
    )
    expected = dict(zip(names, reference(repository_of(served), model, *inputs.values()), strict=True))
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == (f"{model}-42", model, "1")
    outputs = {output["name"]: output for output in response["outputs"]}
    assert set(outputs) == set(names)
    for name, want in expected.items():
        assert_matches(result.as_numpy(name), want)
        output, parameters = outputs[name], outputs[name].get("parameters") or {}
        assert (output["datatype"], output["shape"]) == (np_to_triton_dtype(want.dtype), list(want.shape))
        if binary_out:
            assert parameters["binary_data_size"] == want.nbytes and "data" not in output
        else:
            assert len(output["data"]) == want.size and "binary_data_size" not in parameters


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (2, 5), (4, 33)])
def test_multi_io_variable_length(
    client: httpclient.InferenceServerClient,
    served: ServeRun,
    rng: np.random.Generator,
    batch: int,
    length: int,
) -> None:
    x = rng.standard_normal((batch, length), dtype=np.float32)
    scale = rng.random((batch, 1), dtype=np.float32)
    result = client.infer("multi_io", [infer_input("x", x), infer_input("scale", scale)])
    scaled, summed = reference(repository_of(served), "multi_io", x, scale)
    # No outputs named: every output comes back (binary, tritonclient's default).
    assert [o["name"] for o in result.get_response()["outputs"]] == ["output__0", "output__1"]
    assert_matches(result.as_numpy("output__0"), scaled)
    assert_matches(result.as_numpy("output__1"), summed)


@pytest.mark.parametrize("binary_out", [True, False])
def test_requested_output_subset(
    client: httpclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator, binary_out: bool
) -> None:
    x = rng.standard_normal((2, 4), dtype=np.float32)
    scale = rng.random((2, 1), dtype=np.float32)
    result = client.infer(
        "multi_io",
        [infer_input("x", x), infer_input("scale", scale)],
        outputs=[httpclient.InferRequestedOutput("output__1", binary_data=binary_out)],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["output__1"]
    assert result.as_numpy("output__0") is None
    _, summed = reference(repository_of(served), "multi_io", x, scale)
    assert_matches(result.as_numpy("output__1"), summed)


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_linear_batches(
    client: httpclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator, batch: int
) -> None:
    data = rng.standard_normal((batch, 16), dtype=np.float32)
    result = client.infer("linear", [infer_input("input__0", data)], model_version="1")
    (expected,) = reference(repository_of(served), "linear", data)
    assert_matches(result.as_numpy("output__0"), expected)
    assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False])
def test_request_id_echoed(client: httpclient.InferenceServerClient, served: ServeRun, binary: bool) -> None:
    data = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    (expected,) = reference(repository_of(served), "linear", data)
    result = client.infer(
        "linear",
        [infer_input("input__0", data, binary)],
        outputs=[httpclient.InferRequestedOutput("output__0", binary_data=binary)],
        request_id=f"request-{binary}-42",
    )
    assert result.get_response()["id"] == f"request-{binary}-42"
    assert_matches(result.as_numpy("output__0"), expected)
    anonymous = client.infer("linear", [infer_input("input__0", data, binary)])
    assert "id" not in anonymous.get_response()
    assert_matches(anonymous.as_numpy("output__0"), expected)


def test_async_infer(
    client: httpclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator
) -> None:
    """Several requests in flight at once (they may share batches); each gets its own answer."""
    repository = repository_of(served)
    pending = []
    for i in range(12):
        batch = 1 + i % 3
        if i % 2:
            x = rng.standard_normal((batch, 6), dtype=np.float32)
            scale = rng.random((batch, 1), dtype=np.float32)
            request = client.async_infer(
                "multi_io", [infer_input("x", x), infer_input("scale", scale)], request_id=f"async-{i}"
            )
            expected = reference(repository, "multi_io", x, scale)
            names = ["output__0", "output__1"]
        else:
            data = rng.standard_normal((batch, 16), dtype=np.float32)
            request = client.async_infer("linear", [infer_input("input__0", data)], request_id=f"async-{i}")
            expected = reference(repository, "linear", data)
            names = ["output__0"]
        pending.append((i, request, names, expected))
    for i, request, names, expected in pending:
        result = request.get_result(timeout=300)
        assert result.get_response()["id"] == f"async-{i}"
        for name, want in zip(names, expected, strict=True):
            assert_matches(result.as_numpy(name), want)


def test_inference_statistics(client: httpclient.InferenceServerClient, served: ServeRun) -> None:
    def linear_stats() -> dict[str, Any]:
        (stats,) = client.get_inference_statistics("linear")["model_stats"]
        assert stats["name"] == "linear"
        assert stats["version"] == "1"
        return stats

    before = linear_stats()
    data = np.ones((2, 16), dtype=np.float32)
    (expected,) = reference(repository_of(served), "linear", data)
    for _ in range(3):
        result = client.infer("linear", [infer_input("input__0", data)])
        assert_matches(result.as_numpy("output__0"), expected)
    after = linear_stats()
    assert after["inference_count"] - before["inference_count"] == 6
    assert 1 <= after["execution_count"] - before["execution_count"] <= 3
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 3
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] > 0

    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == EXAMPLE_MODELS
    (versioned,) = client.get_inference_statistics("linear", "1")["model_stats"]
    assert versioned["version"] == "1"


# --- error statuses ------------------------------------------------------------------------


def _json_infer(inputs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"inputs": inputs, **extra}


LINEAR_1x16 = {"name": "input__0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}
# Binary extension: the header promises 64 bytes of tensor data, the body has 10.
SHORT_BINARY_HEADER = (
    b'{"inputs":[{"name":"input__0","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":64}}]}'
)

BAD_REQUESTS: list[Any] = [
    # id, path, request kwargs, status
    pytest.param("/v2/models/linear/infer", {"content": b'{"inputs": [{"name": '}, 400, id="malformed-json"),
    pytest.param("/v2/models/linear/infer", {"content": b"[1, 2]"}, 400, id="json-not-an-object"),
    pytest.param("/v2/repository/index", {"content": b"{not json"}, 400, id="malformed-json-index"),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([{**LINEAR_1x16, "shape": [2, 15], "data": [0.5] * 30}])},
        400,
        id="wrong-shape",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([{**LINEAR_1x16, "shape": [16]}])},
        400,
        id="missing-batch-dim",
    ),
    pytest.param(
        "/v2/models/int_ops/infer",
        {"json": _json_infer([{"name": "INPUT__0", "datatype": "INT32", "shape": [3, 2], "data": [1] * 6}])},
        400,
        id="wrong-shape-no-batching",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([{**LINEAR_1x16, "data": [0.5] * 3}])},
        400,
        id="data-does-not-fill-shape",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([{**LINEAR_1x16, "datatype": "INT32", "data": [1] * 16}])},
        400,
        id="wrong-datatype",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([{**LINEAR_1x16, "datatype": "BYTES", "data": ["a"] * 16}])},
        400,
        id="unsupported-datatype",
    ),
    pytest.param(
        "/v2/models/multi_io/infer",
        {"json": _json_infer([{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}])},
        400,
        id="missing-input",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([{**LINEAR_1x16, "name": "no_such_input"}])},
        400,
        id="unknown-input",
    ),
    pytest.param(
        "/v2/models/multi_io/infer",
        {
            "json": _json_infer(
                [
                    {"name": "x", "datatype": "FP32", "shape": [5, 2], "data": [1.0] * 10},
                    {"name": "scale", "datatype": "FP32", "shape": [5, 1], "data": [2.0] * 5},
                ]
            )
        },
        400,
        id="batch-over-max-batch-size",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([LINEAR_1x16], outputs=[{"name": "no_such_output"}])},
        400,
        id="unknown-output",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {
            "content": SHORT_BINARY_HEADER + b"\0" * 10,
            "headers": {"Inference-Header-Content-Length": str(len(SHORT_BINARY_HEADER))},
        },
        400,
        id="binary-data-short",
    ),
    pytest.param(
        "/v2/models/linear/infer",
        {"json": _json_infer([LINEAR_1x16]), "headers": {"Inference-Header-Content-Length": "many"}},
        400,
        id="bad-header-length",
    ),
    pytest.param(
        "/v2/models/no_such_model/infer", {"json": _json_infer([LINEAR_1x16])}, 404, id="unknown-model"
    ),
    pytest.param(
        "/v2/models/linear/versions/7/infer", {"json": _json_infer([LINEAR_1x16])}, 404, id="unknown-version"
    ),
    pytest.param("/v2/repository/models/linear/load", {"json": {}}, 503, id="load-without-model-control"),
    pytest.param("/v2/repository/models/linear/unload", {"json": {}}, 503, id="unload-without-model-control"),
]


@pytest.mark.parametrize(("path", "request_kwargs", "status"), BAD_REQUESTS)
def test_bad_request_status(
    http: httpx.Client, served: ServeRun, path: str, request_kwargs: dict[str, Any], status: int
) -> None:
    message = assert_error(http.post(path, **request_kwargs), status)
    print(f"{status} {path}: {message}")
    assert "Traceback" not in message
    assert_still_serving(http, repository_of(served))


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/no_such_model",
        "/v2/models/no_such_model/config",
        "/v2/models/no_such_model/stats",
        "/v2/models/linear/versions/7",
        "/v2/models/linear/versions/7/config",
    ],
)
def test_unknown_model_or_version_is_404(http: httpx.Client, served: ServeRun, path: str) -> None:
    assert_error(http.get(path), 404)
    assert_still_serving(http, repository_of(served))


def test_tritonclient_sees_error_status(client: httpclient.InferenceServerClient, served: ServeRun) -> None:
    """tritonclient turns the JSON error into InferenceServerException(status, message)."""
    x = np.ones((5, 2), dtype=np.float32)  # batch 5 > multi_io's max_batch_size 4
    scale = np.ones((5, 1), dtype=np.float32)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("multi_io", [infer_input("x", x), infer_input("scale", scale)])
    assert raised.value.status() == "400"
    assert "batch" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.infer("no_such_model", [infer_input("x", x)])
    assert raised.value.status() == "404"
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("linear")
    assert raised.value.status() == "503"
    assert raised.value.message().startswith("explicit model load / unload is not allowed")
    assert client.is_model_ready("linear")


def test_declared_oversize_body_is_413(http: httpx.Client, served: ServeRun) -> None:
    """A Content-Length over the default 64 MiB limit is refused before the body is read."""
    limit = 64 * 2**20
    with socket.create_connection(("127.0.0.1", served.port), timeout=120) as sock:
        sock.sendall(
            b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {limit + 1}\r\n\r\n".encode()
            + b'{"inputs": ['
        )
        response = HTTPResponse(sock)
        response.begin()
        body = response.read()
    assert response.status == 413, body
    assert b'"error"' in body
    assert_still_serving(http, repository_of(served))


def test_raw_binary_request_as_curl_sends_it(served: ServeRun) -> None:
    """Inference-Header-Content-Length: 0: the body is the raw bytes of the model's one input."""
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    response = httpx.post(
        served.url + "/v2/models/linear/infer",
        content=x.tobytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    header_length = int(response.headers["Inference-Header-Content-Length"])
    header = orjson.loads(response.content[:header_length])
    [output] = header["outputs"]
    result = np.frombuffer(response.content[header_length:], np.float32).reshape(output["shape"])
    (want,) = reference(repository_of(served), "linear", x)
    assert_matches(result, want)
    two_inputs = httpx.post(
        served.url + "/v2/models/multi_io/infer",
        content=x.tobytes(),
        headers={"Inference-Header-Content-Length": "0"},
        timeout=30,
    )
    assert two_inputs.status_code == 400
    assert (
        "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs"
        in two_inputs.json()["error"]
    )
