"""Every error status with its {"error": ...} body, and that the next request is served normally."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from starlette.testclient import TestClient

from tests.conftest import post_scope

LINEAR_OK = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [2, 16], "data": [0.5] * 32}]}


def linear_request(**tensor: object) -> dict:
    return {"inputs": [{**LINEAR_OK["inputs"][0], **tensor}]}


def binary_linear(declared: int, actual: int) -> tuple[dict[str, str], bytes]:
    """A binary-extension request to `linear` declaring `declared` bytes and carrying `actual`."""
    header = orjson.dumps(linear_request(data=None, parameters={"binary_data_size": declared}))
    return {"Inference-Header-Content-Length": str(len(header))}, header + bytes(actual)


def assert_error(response, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    assert phrase in body["error"], body["error"]
    assert "Traceback" not in body["error"]


def assert_serves_normally(client: TestClient) -> None:
    response = client.post("/v2/models/linear/infer", json=LINEAR_OK)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [2, 4]


BAD_INFER_REQUESTS: dict[str, tuple[str, dict[str, str], bytes, int, str]] = {
    # name: (model path, headers, body, status, phrase of the error)
    "malformed JSON": ("linear", {}, b'{"inputs": [', 400, "malformed JSON"),
    "not an object": ("linear", {}, b"[]", 400, "invalid inference request"),
    "wrong shape": (
        "linear",
        {},
        orjson.dumps(linear_request(shape=[2, 15], data=[0.5] * 30)),
        400,
        "unexpected shape for input 'input__0' for model 'linear'. Expected [-1,16], got [2,15]",
    ),
    "wrong datatype": (
        "linear",
        {},
        orjson.dumps(linear_request(datatype="FP64")),
        400,
        "data-type is 'FP64', but model 'linear' expects 'FP32'",
    ),
    "unsupported datatype": (
        "linear",
        {},
        orjson.dumps(linear_request(datatype="BF16")),
        400,
        "unsupported datatype 'BF16'",
    ),
    "wrong value kind": (
        "int_ops",
        {},
        orjson.dumps(
            {"inputs": [{"name": "INPUT__0", "datatype": "INT32", "shape": [2, 3], "data": [1.5] * 6}]}
        ),
        400,
        "not INT32",
    ),
    "missing input": (
        "multi_io",
        {},
        orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}),
        400,
        "expected 2 inputs but got 1 inputs for model 'multi_io'. Got input(s) ['x'], but missing required "
        "input(s) ['scale']. Please provide all required input(s).",
    ),
    "unknown input": (
        "linear",
        {},
        orjson.dumps(
            {
                "inputs": [
                    *LINEAR_OK["inputs"],
                    {"name": "extra", "datatype": "FP32", "shape": [2, 16], "data": [0.5] * 32},
                ]
            }
        ),
        400,
        "expected 1 inputs but got 2 inputs for model 'linear'. Got input(s) ['extra','input__0']",
    ),
    "unknown output": (
        "linear",
        {},
        orjson.dumps({**LINEAR_OK, "outputs": [{"name": "output__9"}]}),
        400,
        "unexpected inference output 'output__9' for model 'linear'",
    ),
    "batch too big": (
        "image_classifier",
        {},
        orjson.dumps(
            {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [9, 3, 1, 1], "data": [0.0] * 27}]}
        ),
        400,
        "inference request batch-size must be <= 8 for 'image_classifier'",
    ),
    "data size": (
        "linear",
        {},
        orjson.dumps(linear_request(data=[0.5] * 31)),
        400,
        "Unable to parse 'data': Shape does not match true shape of 'data' field",
    ),
    "bad header length": (
        "linear",
        {"Inference-Header-Content-Length": "x"},
        orjson.dumps(LINEAR_OK),
        400,
        "is not an integer",
    ),
    "bad binary_data_size": (
        "linear",
        *binary_linear(100, 128),
        400,
        "input byte size mismatch for input 'input__0' for model 'linear'. Expected 128, got 100",
    ),
    "trailing bytes": (
        "linear",
        *binary_linear(128, 130),
        400,
        "2 bytes not claimed by any binary_data_size",
    ),
    "short binary data": (
        "linear",
        *binary_linear(128, 64),
        400,
        "unexpected size for input 'input__0', expecting 64 additional bytes for model 'linear'",
    ),
    "header length past the body": (
        "linear",
        {"Inference-Header-Content-Length": "1000"},
        b"{}",
        400,
        "outside the body",
    ),
    "bad gzip": ("linear", {"Content-Encoding": "gzip"}, b"not gzip", 400, "cannot decompress gzip"),
    "unknown encoding": ("linear", {"Content-Encoding": "br"}, b"{}", 400, "unsupported Content-Encoding"),
    "unknown model": (
        "nope",
        {},
        orjson.dumps(LINEAR_OK),
        404,
        "Request for unknown model: 'nope' is not found",
    ),
    "unknown version": (
        "linear/versions/2",
        {},
        orjson.dumps(LINEAR_OK),
        404,
        "Request for unknown model: 'linear' version 2 is not found",
    ),
    "version not a number": ("linear/versions/x", {}, orjson.dumps(LINEAR_OK), 404, "Not Found"),
    "broken config": (
        "bad_pbtxt",
        {},
        orjson.dumps(LINEAR_OK),
        503,
        "Request for unknown model: 'bad_pbtxt' has no available versions; model 'bad_pbtxt' is not ready: "
        "cannot parse",
    ),
    "broken TorchScript": (
        "corrupt_torchscript",
        {},
        orjson.dumps(LINEAR_OK),
        503,
        "not ready: failed to load TorchScript",
    ),
    "wrong platform": ("onnx_model", {}, orjson.dumps(LINEAR_OK), 503, "onnxruntime_onnx"),
}


@pytest.mark.parametrize("case", list(BAD_INFER_REQUESTS))
def test_bad_inference_requests(client: TestClient, case: str) -> None:
    model, headers, body, status, phrase = BAD_INFER_REQUESTS[case]
    assert_error(client.post(f"/v2/models/{model}/infer", content=body, headers=headers), status, phrase)
    assert_serves_normally(client)


@pytest.mark.parametrize(
    ("path", "status", "phrase"),
    [
        ("/v2/models/nope", 404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/nope/ready", 404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/nope/config", 404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/nope/stats", 404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/linear/versions/7", 404, "Request for unknown model: 'linear' version 7 is not found"),
        ("/v2/models/linear/versions/7/ready", 404, "version 7 is not found"),
        ("/v2/models/linear/versions/07/stats", 404, "version 7 is not found"),
        # As in Triton, whose version routes take only digits: no such route.
        ("/v2/models/linear/versions/x/config", 404, "Not Found"),
        ("/v2/models/linear/versions/-1/ready", 404, "Not Found"),
        ("/v2/models/linear/versions/²/ready", 404, "Not Found"),
        ("/v2/models/bad_pbtxt", 503, "is not ready: cannot parse"),
        ("/v2/models/bad_pbtxt/ready", 503, "is not ready"),
        ("/v2/models/corrupt_torchscript/config", 503, "failed to load TorchScript"),
        ("/v2/models/onnx_model/stats", 503, "onnxruntime_onnx"),
        ("/v3", 404, "Not Found"),
        ("/v2/models/linear/explain", 404, "Not Found"),
    ],
)
def test_bad_get_requests(client: TestClient, path: str, status: int, phrase: str) -> None:
    assert_error(client.get(path), status, phrase)
    assert_serves_normally(client)


def test_wrong_method_is_405_in_json(client: TestClient) -> None:
    assert_error(client.get("/v2/models/linear/infer"), 405, "Method Not Allowed")
    assert_error(client.post("/v2/health/live"), 405, "Method Not Allowed")


def test_malformed_repository_bodies(client: TestClient) -> None:
    assert_error(client.post("/v2/repository/index", content=b"{"), 400, "malformed JSON")
    assert_error(client.post("/v2/repository/index", content=b'"ready"'), 400, "must be a JSON object")
    assert_serves_normally(client)


@pytest.fixture
def small_client(serve) -> TestClient:
    return serve(max_request_bytes=1024)[0]


def test_oversize_body_is_413(small_client: TestClient) -> None:
    big = orjson.dumps(linear_request(shape=[64, 16], data=[0.5] * 1024))
    assert_error(
        small_client.post("/v2/models/linear/infer", content=big), 413, "exceeds the 1024-byte limit"
    )
    assert_serves_normally(small_client)


def test_oversize_streamed_body_without_content_length_is_413(small_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b" " * 512

    assert_error(
        small_client.post("/v2/models/linear/infer", content=chunks()), 413, "exceeds the 1024-byte limit"
    )
    assert_serves_normally(small_client)


def test_oversize_after_decompression_is_413(small_client: TestClient) -> None:
    body = gzip.compress(orjson.dumps(linear_request(shape=[64, 16], data=[0.5] * 1024)))
    assert len(body) < 1024
    response = small_client.post(
        "/v2/models/linear/infer", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert_error(response, 413, "decompressed request body exceeds the 1024-byte limit")
    assert_serves_normally(small_client)


def test_oversize_repository_body_is_413(small_client: TestClient) -> None:
    assert_error(small_client.post("/v2/repository/index", content=b" " * 2000), 413, "1024-byte limit")


def test_unexpected_failure_is_a_500_without_details(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    client, runtime = serve()

    async def broken_infer(*args: object) -> dict[str, np.ndarray]:
        raise KeyError("internal detail")

    monkeypatch.setattr(runtime, "infer", broken_infer)
    assert_error(client.post("/v2/models/linear/infer", json=LINEAR_OK), 500, "internal server error")
    assert "internal detail" not in client.post("/v2/models/linear/infer", json=LINEAR_OK).text
    monkeypatch.undo()
    assert_serves_normally(client)


class Total(torch.nn.Module):
    """Sums the whole batch: its output lacks the batch dimension config.pbtxt promises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum()


def test_model_failure_is_a_500_naming_the_cause(serve, repository: Path) -> None:
    """`linear`'s config.pbtxt over a module that breaks its promise."""
    torch.jit.trace(Total(), torch.ones(2, 16)).save(str(repository / "linear" / "1" / "model.pt"))
    client, _ = serve(repository=repository)
    response = client.post("/v2/models/linear/infer", json=LINEAR_OK)
    assert_error(response, 500, "model returned output 'output__0' of shape [] for a batch of 2")
    assert client.get("/v2/health/ready").status_code == 200
    stats = client.get("/v2/models/linear/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == 1


@pytest.mark.parametrize("content_length", [b"1000", None])
@pytest.mark.parametrize("path", ["/v2/models/linear/infer", "/v2/repository/index"])
def test_client_leaving_mid_body_is_quiet(
    client: TestClient, caplog: pytest.LogCaptureFixture, content_length: bytes | None, path: str
) -> None:
    """A client that disconnects mid-body (ASGI `http.disconnect`) logs no traceback."""
    messages = [
        {"type": "http.request", "body": b'{"inputs": [', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [] if content_length is None else [(b"content-length", content_length)]
    scope = post_scope(path, headers)
    client.portal.call(client.app, scope, receive, send)
    assert not messages  # the body was read up to the disconnect
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    assert_serves_normally(client)
