"""The tensor rules both codecs apply (infer_types): bounds on what a request makes the server
hold, and typed or refused tensor parameters; here through the HTTP decoder (test_grpc_codec
holds the gRPC side)."""

from __future__ import annotations

import pytest

from serve_app.errors import InvalidInputError, PayloadTooLargeError
from serve_app.infer_types import Limits
from tests.unit.http_bodies import decode, json_input


def test_dimensions_are_bounded_at_numpys_limit() -> None:
    assert decode({"inputs": [json_input("x", "FP32", [1] * 32, [2.5])]}).inputs[0].shape == (1,) * 32
    for dims in (33, 40):
        with pytest.raises(InvalidInputError, match=f"has {dims} dimensions; at most 32"):
            decode({"inputs": [json_input("x", "FP32", [1] * dims, [2.5])]})


@pytest.mark.parametrize(
    ("shape", "datatype"),
    [
        ([2**40], "FP32"),  # claims a terabyte of JSON data
        ([2**62, 2**62], "INT8"),
        ([0, 2**63], "FP32"),  # empty, but numpy cannot shape it
        ([2**17 + 1, 2], "FP32"),  # just over LIMITS (1 MiB)
    ],
)
def test_element_counts_are_bounded_before_allocation(shape: list[int], datatype: str) -> None:
    with pytest.raises(PayloadTooLargeError, match="would exceed the request's 1048576-byte limit"):
        decode({"inputs": [json_input("x", datatype, shape, [1])]})


def test_tensor_bytes_are_bounded_across_inputs() -> None:
    half = json_input("a", "UINT8", [2**19], [0] * 2**19)
    assert len(decode({"inputs": [half, {**half, "name": "b"}]}).inputs) == 2  # exactly the limit
    with pytest.raises(PayloadTooLargeError, match="input 'c'"):
        decode({"inputs": [half, {**half, "name": "b"}, json_input("c", "UINT8", [1], [0])]})


def test_inputs_and_outputs_per_request_are_bounded() -> None:
    limits = Limits(max_bytes=2**20, max_tensors=3)
    three = [json_input(f"x{i}", "FP32", [1], [1]) for i in range(3)]
    assert len(decode({"inputs": three}, limits=limits).inputs) == 3
    with pytest.raises(InvalidInputError, match="request has 4 inputs; at most 3"):
        decode({"inputs": [*three, json_input("x3", "FP32", [1], [1])]}, limits=limits)
    outputs = [{"name": f"y{i}"} for i in range(4)]
    with pytest.raises(InvalidInputError, match="request has 4 outputs; at most 3"):
        decode({"inputs": three, "outputs": outputs}, limits=limits)


@pytest.mark.parametrize(
    ("request_parameters", "output_parameters", "input_parameters", "message"),
    [
        ({"binary_data_output": {"x": 1}}, None, None, "'binary_data_output' must be a boolean, not dict"),
        ({"binary_data_output": "true"}, None, None, "'binary_data_output' must be a boolean, not str"),
        ({"binary_data_output": 1}, None, None, "'binary_data_output' must be a boolean, not int"),
        (None, {"binary_data": 1}, None, "output 'y' parameter 'binary_data' must be a boolean"),
        (None, {"binary_data": None}, None, "must be a boolean, not NoneType"),
        (None, {"class_count": 3}, None, "unsupported parameters ['class_count']"),
        (None, None, {"binary_data_size": 4.0}, "Unable to parse 'binary_data_size': input 'x' has 4.0"),
    ],
)
def test_parameters_the_codec_reads_must_have_their_type(
    request_parameters: dict | None,
    output_parameters: dict | None,
    input_parameters: dict | None,
    message: str,
) -> None:
    body = {
        "parameters": request_parameters,
        "inputs": [{**json_input("x", "FP32", [1], [1]), "parameters": input_parameters}],
        "outputs": [{"name": "y", "parameters": output_parameters}],
    }
    with pytest.raises(InvalidInputError) as info:
        decode(body)
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"])
@pytest.mark.parametrize("tensor", ["input", "output"])
def test_shared_memory_tensors_are_refused_naming_the_extension(key: str, tensor: str) -> None:
    # Even next to data or binary_data: never answered from anything but the named region.
    parameters = {key: "region0" if key.endswith("region") else 0}
    x = json_input("x", "FP32", [1], [1])
    body = {"inputs": [{**x, "parameters": parameters} if tensor == "input" else x]}
    if tensor == "output":
        body["outputs"] = [{"name": "y", "parameters": {"binary_data": True, **parameters}}]
    with pytest.raises(InvalidInputError) as info:
        decode(body)
    name = "x" if tensor == "input" else "y"
    assert f"{tensor} '{name}': parameter '{key}' is Triton's shared-memory extension" in str(info.value)
    assert "not support" in str(info.value)
