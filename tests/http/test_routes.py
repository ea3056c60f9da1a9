"""Every route of the HTTP API through Starlette's TestClient, on the embedded torch runtime."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from starlette.routing import Match
from starlette.testclient import TestClient

from serve_app import __version__
from tests.conftest import post_scope

READY_MODELS = ["image_classifier", "int_ops", "linear", "multi_io"]
Reference = Callable[..., list[np.ndarray]]


def infer_binary(
    client: TestClient,
    model: str,
    inputs: list[httpclient.InferInput],
    outputs: list[httpclient.InferRequestedOutput] | None = None,
    path_suffix: str = "",
    **kwargs: object,
) -> httpclient.InferResult:
    """POST a body built by tritonclient; parse the reply with tritonclient."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, **kwargs
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    response = client.post(f"/v2/models/{model}{path_suffix}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    header_length = response.headers.get("inference-header-content-length")
    return httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=None if header_length is None else int(header_length)
    )


def infer_input(name: str, array: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), httpclient.np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_infer_paths_match_no_other_route(client: TestClient) -> None:
    """The infer routes come first (the router and Serve's route naming try routes in order), and
    the app hands their requests over before routing: safe only while no other route takes their
    paths, nor they another's."""
    routes = client.app.routes
    infer = [route for route in routes if route.path.endswith("/infer")]
    for route in routes:
        path = route.path.replace("{model}", "m").replace("{version}", "1")
        scope = {"type": "http", "path": path, "root_path": "", "method": "POST"}
        matching = [other.path for other in routes if other.matches(scope)[0] is not Match.NONE]
        if route in infer:
            assert matching == [route.path]
        else:
            assert not [other for other in infer if other.path in matching], path


def test_health(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    response = client.get("/v2/health/ready")
    assert response.status_code == 200 and response.json() == {"ready": True}


def test_health_ready_is_503_once_the_runtime_stopped(serve) -> None:
    client, runtime = serve()
    client.portal.call(runtime.stop)
    response = client.get("/v2/health/ready")
    assert response.status_code == 503 and response.json() == {"ready": False}
    assert client.get("/v2/health/live").json() == {"live": True}


def test_server_metadata(client: TestClient) -> None:
    body = client.get("/v2").json()
    assert (body["name"], body["version"]) == ("triton", "2.51.0")  # what clients read, on both runtimes
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(
        body["extensions"]
    )
    block = body["serve_app"]
    assert {key: block[key] for key in ("version", "runtime", "device", "replica")} == {
        "version": __version__,
        "runtime": "torch",
        "device": "cpu",
        "replica": "test",
    }
    assert block["model_loads"] >= 1 and "linear" in block["loaded_models"]


@pytest.mark.parametrize("prefix", ["/v2/models/linear", "/v2/models/linear/versions/1"])
def test_model_metadata_ready_and_config(client: TestClient, prefix: str) -> None:
    assert client.get(prefix).json() == {
        "name": "linear",
        "versions": ["1"],
        "platform": "pytorch_libtorch",
        "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert client.get(f"{prefix}/ready").json() == {"name": "linear", "ready": True}
    config = client.get(f"{prefix}/config").json()
    assert config["name"] == "linear" and config["max_batch_size"] == 64
    assert config["input"] == [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [16]}]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


def test_json_inference_matches_torch(
    client: TestClient, mixed_repository: Path, torch_reference: Reference
) -> None:
    x = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)
    response = client.post(
        "/v2/models/linear/infer",
        json={
            "id": "json-1",
            "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [3, 16], "data": x.tolist()}],
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("linear", "1", "json-1")
    [output] = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("output__0", "FP32", [3, 4])
    expected = torch_reference(mixed_repository, "linear", x)[0]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(3, 4), expected, atol=1e-6)


def test_json_inference_with_flat_data_and_versioned_path(
    client: TestClient, mixed_repository: Path, torch_reference: Reference
) -> None:
    x = np.array([[-2, 0, 3], [4, -5, 6]], np.int32)
    response = client.post(
        "/v2/models/int_ops/versions/1/infer",
        json={
            "inputs": [
                {"name": "INPUT__0", "datatype": "INT32", "shape": [2, 3], "data": x.ravel().tolist()}
            ],
            "outputs": [{"name": "OUTPUT__1"}],
        },
    )
    assert response.status_code == 200
    [output] = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("OUTPUT__1", "INT64", [2, 3])
    np.testing.assert_array_equal(
        np.reshape(output["data"], (2, 3)), torch_reference(mixed_repository, "int_ops", x)[1]
    )


def test_binary_inference_through_tritonclient(
    client: TestClient, mixed_repository: Path, torch_reference: Reference
) -> None:
    image = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    result = infer_binary(client, "image_classifier", [infer_input("input__0", image)], request_id="bin-1")
    assert result.get_response()["id"] == "bin-1"
    output = result.get_output("output__0")
    assert output["parameters"] == {"binary_data_size": 2 * 10 * 4}  # binary_data_output by default
    np.testing.assert_allclose(
        result.as_numpy("output__0"),
        torch_reference(mixed_repository, "image_classifier", image)[0],
        atol=1e-6,
    )


@pytest.mark.parametrize("content_length", [True, False])
def test_a_body_in_several_messages_is_decoded_whole(
    client: TestClient, mixed_repository: Path, torch_reference: Reference, content_length: bool
) -> None:
    """A body the server passes in pieces (uvicorn does, for large ones) is assembled before decoding;
    a one-message body is used as it is."""
    x = np.random.default_rng(2).standard_normal((2, 16), dtype=np.float32)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([infer_input("input__0", x)])
    messages = [
        {"type": "http.request", "body": body[start : start + 7], "more_body": start + 7 < len(body)}
        for start in range(0, len(body), 7)
    ]
    headers = [(b"inference-header-content-length", str(json_size).encode())]
    if content_length:
        headers.append((b"content-length", str(len(body)).encode()))
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    path = "/v2/models/linear/infer"
    scope = post_scope(path, headers)
    client.portal.call(client.app, scope, receive, send)
    start, reply = sent
    assert start["status"] == 200 and not messages
    header_length = int(dict(start["headers"])[b"inference-header-content-length"])
    result = httpclient.InferenceServerClient.parse_response_body(reply["body"], header_length=header_length)
    expected = torch_reference(mixed_repository, "linear", x)[0]
    np.testing.assert_allclose(result.as_numpy("output__0"), expected, atol=1e-6)


def test_binary_and_json_mixed_per_input_and_output(
    client: TestClient, mixed_repository: Path, torch_reference: Reference
) -> None:
    rng = np.random.default_rng(2)
    x = rng.random((2, 5), dtype=np.float32)
    scale = rng.random((2, 1), dtype=np.float32)
    outputs = [
        httpclient.InferRequestedOutput("output__1", binary_data=False),
        httpclient.InferRequestedOutput("output__0", binary_data=True),
    ]
    result = infer_binary(
        client,
        "multi_io",
        [infer_input("x", x), infer_input("scale", scale, binary=False)],
        outputs,
        path_suffix="/versions/1",
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["output__1", "output__0"]
    assert "data" in response["outputs"][0] and "parameters" not in response["outputs"][0]
    assert response["outputs"][1]["parameters"] == {"binary_data_size": x.nbytes}
    expected = torch_reference(mixed_repository, "multi_io", x, scale)
    np.testing.assert_allclose(result.as_numpy("output__0"), expected[0], atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("output__1"), expected[1], atol=1e-6)


def test_binary_request_with_json_reply(client: TestClient) -> None:
    x = np.ones((1, 16), np.float32)
    result = infer_binary(
        client, "linear", [infer_input("input__0", x)], [httpclient.InferRequestedOutput("output__0", False)]
    )
    assert "data" in result.get_output("output__0")
    assert result.as_numpy("output__0").shape == (1, 4)


def test_bool_and_int64_outputs_in_binary(
    client: TestClient, mixed_repository: Path, torch_reference: Reference
) -> None:
    x = np.array([[1, -1, 0], [2, 2, -7]], np.int32)
    result = infer_binary(client, "int_ops", [infer_input("INPUT__0", x)])
    expected = torch_reference(mixed_repository, "int_ops", x)
    assert result.as_numpy("OUTPUT__0").dtype == np.bool_
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), expected[0])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), expected[1])


def test_concurrent_requests_each_get_their_own_rows(
    client: TestClient, mixed_repository: Path, torch_reference: Reference
) -> None:
    """Requests batched together by the scheduler are split back to the right callers."""
    rng = np.random.default_rng(3)
    rows = [rng.standard_normal((1 + i % 3, 16), dtype=np.float32) for i in range(12)]

    def post(x: np.ndarray) -> httpclient.InferResult:
        return infer_binary(client, "linear", [infer_input("input__0", x)])

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, rows))
    for x, result in zip(rows, results, strict=True):
        expected = torch_reference(mixed_repository, "linear", x)[0]
        np.testing.assert_allclose(result.as_numpy("output__0"), expected, atol=1e-6)
    [stats] = client.get("/v2/models/linear/stats").json()["model_stats"]
    assert stats["inference_stats"]["success"]["count"] == len(rows)
    assert stats["inference_count"] == sum(len(x) for x in rows)


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_binary_request(
    client: TestClient, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    """As tritonclient sends with request_compression_algorithm: the header length is uncompressed."""
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([infer_input("input__0", x)])
    response = client.post(
        "/v2/models/linear/infer",
        content=compress(body),
        headers={"Content-Encoding": encoding, "Inference-Header-Content-Length": str(json_size)},
    )
    assert response.status_code == 200, response.text
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers["inference-header-content-length"])
    )
    assert result.as_numpy("output__0").shape == (2, 4)


def test_parameters_are_echoed(client: TestClient) -> None:
    response = client.post(
        "/v2/models/linear/infer",
        json={
            "parameters": {"tag": "abc"},
            "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}],
        },
    )
    assert response.json()["parameters"] == {"tag": "abc"}


def test_statistics_routes(client: TestClient) -> None:
    x = {"name": "input__0", "datatype": "FP32", "shape": [2, 16], "data": [1.0] * 32}
    for _ in range(3):
        assert client.post("/v2/models/linear/infer", json={"inputs": [x]}).status_code == 200
    [entry] = client.get("/v2/models/linear/stats").json()["model_stats"]
    assert (entry["name"], entry["version"], entry["inference_count"]) == ("linear", "1", 6)
    assert entry["inference_stats"]["success"]["count"] == 3
    assert client.get("/v2/models/linear/versions/1/stats").json()["model_stats"] == [entry]
    everything = client.get("/v2/models/stats").json()["model_stats"]
    assert [s["name"] for s in everything] == READY_MODELS


def test_repository_index(client: TestClient, broken_reasons: dict[str, str]) -> None:
    rows = client.post("/v2/repository/index").json()
    assert [r["name"] for r in rows] == sorted([*READY_MODELS, *broken_reasons])
    for row in rows:
        if row["name"] in broken_reasons:
            assert row["state"] == "UNAVAILABLE" and "version" not in row
            assert broken_reasons[row["name"]] in row["reason"]
        else:
            assert row == {"name": row["name"], "version": "1", "state": "READY", "reason": ""}
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert [r["name"] for r in ready] == READY_MODELS
    assert client.post("/v2/repository/index", content=b"  ").json() == rows


@pytest.mark.parametrize("action", ["load", "unload"])
def test_model_control_off_is_triton_s_503(client: TestClient, action: str) -> None:
    response = client.post(f"/v2/repository/models/linear/{action}")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error.startswith("explicit model load / unload is not allowed if polling is enabled")
    assert "args.model_control" in error
    assert client.get("/v2/models/linear/ready").status_code == 200


def test_model_control_unload_and_load(serve, repository: Path) -> None:
    client, _ = serve(repository=repository, model_control=True)
    request = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16}]}
    assert client.post("/v2/repository/models/linear/unload").json() == {}
    assert client.get("/v2/models/linear/ready").status_code == 503
    response = client.post("/v2/models/linear/infer", json=request)
    assert response.status_code == 503 and "not ready: unloaded" in response.json()["error"]
    assert {"name": "linear", "state": "UNAVAILABLE", "reason": "unloaded"} in client.post(
        "/v2/repository/index"
    ).json()
    assert client.post("/v2/repository/models/linear/load", json={"parameters": {}}).json() == {}
    assert client.get("/v2/models/linear/ready").json() == {"name": "linear", "ready": True}
    assert client.post("/v2/models/linear/infer", json=request).status_code == 200
    # tritonclient's unload body carries parameters; a body-less load works too.
    assert (
        client.post(
            "/v2/repository/models/int_ops/unload", json={"parameters": {"unload_dependents": False}}
        ).status_code
        == 200
    )
    assert client.post("/v2/repository/models/int_ops/load").status_code == 200

    response = client.post("/v2/repository/models/nope/load")  # changes nothing
    assert response.status_code == 400
    assert response.json()["error"] == (
        "failed to load 'nope', failed to poll from model repository: "
        "no model directory 'nope' in the repository"
    )
    assert client.post("/v2/repository/models/nope/unload").status_code == 404
    (repository / "linear" / "config.pbtxt").write_text("garbage {")
    response = client.post("/v2/repository/models/linear/load")
    assert response.status_code == 503 and "cannot parse" in response.json()["error"]
    assert client.post("/v2/repository/models/linear/load", content=b"[1]").status_code == 400
    # The failed reload left version 1 serving (Triton's EXPLICIT-mode behaviour).
    assert client.post("/v2/models/linear/infer", json=request).status_code == 200
    response = client.post("/v2/repository/models/linear/load", json={"parameters": {"config": "{"}})
    assert response.status_code == 400
    assert "failed to poll from model repository: Invalid config override" in response.json()["error"]
    response = client.post(
        "/v2/repository/models/linear/load", json={"parameters": {"file:1/model.pt": "AA=="}}
    )
    assert response.status_code == 400 and "file overrides are not supported" in response.json()["error"]
    # A config override replaces config.pbtxt (here the broken one) for this load, as in Triton.
    override = {
        "platform": "pytorch_libtorch",
        "max_batch_size": "4",
        "input": [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    load = {"parameters": {"config": json.dumps(override)}}
    assert client.post("/v2/repository/models/linear/load", json=load).status_code == 200
    assert client.get("/v2/models/linear/config").json()["max_batch_size"] == 4
    assert client.post("/v2/models/linear/infer", json=request).status_code == 200
    response = client.post("/v2/repository/models/..hidden/load")
    assert response.status_code == 400 and "not a model directory name" in response.json()["error"]
