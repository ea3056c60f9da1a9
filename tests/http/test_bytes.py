"""BYTES tensors end to end through the app on the torch runtime: HTTP JSON (strings), HTTP binary
(Triton's 4-byte length prefix per element), raw binary requests, gRPC `bytes_contents` and raw,
and the refusals: element counts (Triton's texts, Triton's order), malformed length prefixes,
bytes the torch runtime cannot hand to TorchScript, shapes Triton's PyTorch backend refuses.
The same requests on `runtime: triton` are tests/unit/test_triton_runtime.py's and tests/e2e/qa's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from starlette.testclient import TestClient
from torch import nn
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from serve_app.config import AppArgs
from serve_app.dataplane import DataPlane
from serve_app.model_state.replica import DeploymentModels
from serve_app.runtimes.torch.runtime import TorchRuntime
from tests.conftest import ServeFactory, add_scripted, add_string_models
from tests.unit.test_grpc_api import Ingress, call

PAIR = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [
  { name: "INPUT0" data_type: TYPE_STRING dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 4 ] }
]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 4 ] } ]
"""
ONE = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT__0" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
TWO_DIMS = ONE.replace("dims: [ 1 ]", "dims: [ 2, 2 ]")


class Join(nn.Module):
    def forward(self, INPUT0: list[str], INPUT1: list[str]) -> list[str]:
        return [INPUT0[i] + INPUT1[i] for i in range(len(INPUT0))]  # TorchScript's zip has no strict


class Same(nn.Module):
    def forward(self, x: list[str]) -> list[str]:
        return x


@pytest.fixture(scope="module")
def strings_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bytes") / "repo"
    add_string_models(root)
    for name, module, config in (
        ("pair", Join(), PAIR),
        ("one", Same(), ONE),
        ("two_dims", Same(), TWO_DIMS),
    ):
        add_scripted(root, name, module, config)
    return root


@pytest.fixture
def client(serve: ServeFactory, strings_repository: Path) -> TestClient:
    return serve(repository=strings_repository, max_request_bytes=2**16)[0]


TEXT = np.array([b"he\x00llo", b"", "żółw".encode()], dtype=object)


def infer(client: TestClient, model: str, body: dict | bytes, header_length: int | None = None) -> dict:
    headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(f"/v2/models/{model}/infer", content=content, headers=headers)
    return {"status": response.status_code, "body": response.content, "headers": response.headers}


def test_json_strings_in_and_out(client: TestClient) -> None:
    body = {
        "inputs": [
            {"name": "INPUT__0", "datatype": "BYTES", "shape": [3], "data": [v.decode() for v in TEXT]}
        ]
    }
    answer = infer(client, "strings", body)
    assert answer["status"] == 200, answer["body"]
    outputs = {o["name"]: o for o in json.loads(answer["body"])["outputs"]}
    assert outputs["OUTPUT__0"] == {
        "name": "OUTPUT__0",
        "datatype": "BYTES",
        "shape": [3],
        "data": ["he\x00llo!", "!", "żółw!"],
    }
    assert outputs["OUTPUT__1"]["data"] == [6, 0, 7]  # TorchScript counts a str in UTF-8 bytes


@pytest.mark.parametrize("binary_output", [True, False])
def test_binary_strings_through_tritonclient(client: TestClient, binary_output: bool) -> None:
    """tritonclient's own serialization both ways: a binary input, outputs binary or JSON."""
    tensor = httpclient.InferInput("INPUT__0", [3], "BYTES")
    tensor.set_data_from_numpy(TEXT, binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=binary_output)
        for name in ("OUTPUT__0", "OUTPUT__1")
    ]
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    response = client.post(
        "/v2/models/strings/infer", content=body, headers={"Inference-Header-Content-Length": str(json_size)}
    )
    assert response.status_code == 200, response.text
    header = response.headers.get("inference-header-content-length")
    result = httpclient.InferResult.from_response_body(response.content, header_length=header and int(header))
    expected = np.array([b"he\x00llo!", b"!", "żółw!".encode()], dtype=object)
    got = result.as_numpy("OUTPUT__0")
    assert (got.tolist() if binary_output else [v.encode() for v in got]) == expected.tolist()


def test_batched_strings_share_a_batch_and_come_back_in_their_shape(client: TestClient) -> None:
    body = {"inputs": [{"name": "INPUT__0", "datatype": "BYTES", "shape": [2, 1], "data": [["ab"], ["c"]]}]}
    answer = infer(client, "strings_batched", body)
    assert answer["status"] == 200, answer["body"]
    [output] = json.loads(answer["body"])["outputs"]
    assert (output["shape"], output["data"]) == ([2, 1], ["AB", "C"])


def test_a_raw_binary_request_is_one_string(client: TestClient) -> None:
    """http_test.py test_byte: the body is the one element; the output keeps its length prefix."""
    answer = infer(client, "one", b"427", header_length=0)
    assert answer["status"] == 200, answer["body"]
    header = int(answer["headers"]["inference-header-content-length"])
    assert answer["body"][header:] == b"\x03\x00\x00\x00427"
    refused = infer(client, "strings", b"427", header_length=0)
    assert refused["status"] == 400
    assert b"For BYTE datatype raw input 'INPUT__0', the model must have input shape [1]" in refused["body"]


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (2, "expected 4 string elements for inference input 'INPUT1' for model 'pair', got 2"),
        (
            6,
            "unexpected number of string elements 5 for inference input 'INPUT1' for model 'pair', "
            "expecting 4",
        ),
    ],
)
def test_element_counts_get_tritons_texts_naming_the_last_input_first(
    client: TestClient, count: int, message: str
) -> None:
    """L0_input_validation test_input_string_shape_validation: both inputs are wrong; Triton names INPUT1."""
    data = [str(i) for i in range(count)]
    body = {
        "inputs": [
            {"name": name, "datatype": "BYTES", "shape": [4], "data": data} for name in ("INPUT0", "INPUT1")
        ]
    }
    answer = infer(client, "pair", body)
    assert answer["status"] == 400 and json.loads(answer["body"])["error"] == message


@pytest.mark.parametrize(
    ("serialized", "message"),
    [
        (
            b"\x05\x00\x00\x00abc",
            "incomplete string data for inference input 'INPUT__0', expecting string of length 5",
        ),
        (b"\x01\x00\x00\x00a\x00\x00", "incomplete string length indicator for inference input 'INPUT__0'"),
        (b"\xff\xff\xff\xff", "expecting string of length 4294967295 but only 0 bytes available"),
    ],
)
def test_malformed_length_prefixes_are_a_400(client: TestClient, serialized: bytes, message: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT__0",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(serialized)},
                }
            ]
        }
    ).encode()
    answer = infer(client, "strings", header + serialized, header_length=len(header))
    assert answer["status"] == 400 and message in json.loads(answer["body"])["error"]
    assert (
        infer(
            client,
            "strings",
            {"inputs": [{"name": "INPUT__0", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
        )["status"]
        == 200
    )


def test_strings_are_bounded_like_other_tensors(client: TestClient) -> None:
    """The 64 KiB limit bounds the elements a shape may declare, and the bytes they hold."""
    body = {"inputs": [{"name": "INPUT__0", "datatype": "BYTES", "shape": [10_000], "data": ["x"]}]}
    answer = infer(client, "strings", body)
    assert answer["status"] == 413 and b"would exceed the request's 65536-byte limit" in answer["body"]


def test_bytes_that_are_not_text(client: TestClient) -> None:
    """The torch runtime hands TorchScript str: bytes that are not UTF-8 are this request's 400."""
    tensor = httpclient.InferInput("INPUT__0", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"\xff"], dtype=object), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    answer = infer(client, "strings", body, header_length=json_size)
    assert answer["status"] == 400
    assert b"input 'INPUT__0' holds bytes that are not UTF-8 text" in answer["body"]


def test_string_tensors_the_backend_refuses_are_unavailable_with_its_text(client: TestClient) -> None:
    answer = infer(client, "two_dims", {"inputs": []})
    assert answer["status"] == 503
    assert (
        b"Triton only supports 1 dimensional List of String as input for 'INPUT__0' for model 'two_dims'"
        in answer["body"]
    )


# --- gRPC ------------------------------------------------------------------------------------


@pytest.fixture
async def ingress(strings_repository: Path) -> Ingress:
    runtime = TorchRuntime(strings_repository, torch.device("cpu"), 1)
    await runtime.start()
    dataplane = DataPlane(runtime, DeploymentModels.in_process(runtime), model_control=False, placement={})
    yield Ingress(dataplane, AppArgs(model_repository=strings_repository))
    await runtime.stop()


def grpc_request(raw: bool) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="strings")
    tensor = message.inputs.add(name="INPUT__0", datatype="BYTES", shape=[3])
    if raw:
        message.raw_input_contents.append(serialize_byte_tensor(TEXT).item())
    else:
        tensor.contents.bytes_contents.extend(TEXT.tolist())
    return message


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "bytes_contents"])
async def test_grpc_strings_in_and_out(ingress: Ingress, raw: bool) -> None:
    response, code, details = await call(ingress, "ModelInfer", grpc_request(raw))
    assert code is None, details
    result = grpcclient.InferResult(response)
    assert result.as_numpy("OUTPUT__0").tolist() == [b"he\x00llo!", b"!", "żółw!".encode()]
    assert result.as_numpy("OUTPUT__1").tolist() == [6, 0, 7]


@pytest.mark.anyio
async def test_grpc_element_counts_and_prefixes(ingress: Ingress) -> None:
    message = grpc_request(raw=False)
    message.inputs[0].shape[:] = [2]
    _, code, details = await call(ingress, "ModelInfer", message)
    assert code.name == "INVALID_ARGUMENT"
    assert (
        details
        == "unexpected number of string elements 3 for inference input 'INPUT__0' for model 'strings', "
        "expecting 2"
    )
    message = grpc_request(raw=True)
    message.raw_input_contents[0] = message.raw_input_contents[0][:-2]
    _, code, details = await call(ingress, "ModelInfer", message)
    assert code.name == "INVALID_ARGUMENT" and details.startswith(
        "incomplete string data for inference input"
    )
