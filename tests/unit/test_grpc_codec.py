"""The gRPC codec: ModelInferRequest → InferRequest (raw and typed contents, every datatype),
InferResponse → ModelInferResponse as tritonclient reads it, parameters, the dataplane's
documents as messages, and the errors a malformed message gets."""

from __future__ import annotations

import pickle
import re
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import serialize_byte_tensor

from serve_app.bytes_tensors import as_array
from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.errors import InvalidInputError, PayloadTooLargeError
from serve_app.grpc_codec import (
    CONTENTS_FIELD,
    decode_infer_request,
    encode_infer_response,
    parameter_values,
    set_parameter,
    to_message,
)
from serve_app.infer_types import InferResponse, Limits, RequestedOutput
from serve_app.runtimes.torch.admission import load_model_spec

LIMITS = Limits(max_bytes=2**20)
DATATYPES = sorted(NUMPY_BY_DATATYPE)


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Values that span the datatype (negative where it is signed; for BYTES empty elements,
    and bytes that are not text)."""
    dtype = NUMPY_BY_DATATYPE[datatype]
    if datatype == "BYTES":
        return as_array(
            [str(i).encode() * (i % 3) + b"\xff\x00" * (i % 2) for i in range(np.prod(shape))]
        ).reshape(shape)
    if dtype == np.bool_:
        return (np.arange(np.prod(shape)) % 2 == 0).reshape(shape)
    values = np.arange(np.prod(shape)).reshape(shape)
    if dtype.kind in "if":
        values = values - 3
    return values.astype(dtype)


def request(*tensors: tuple[str, np.ndarray], raw: bool = True, **fields: Any) -> pb.ModelInferRequest:
    """A ModelInferRequest as tritonclient builds it (raw), or with typed contents."""
    message = pb.ModelInferRequest(model_name="m", **fields)
    for name, array in tensors:
        datatype = {v: k for k, v in NUMPY_BY_DATATYPE.items()}[array.dtype]
        tensor = message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw and datatype == "BYTES":  # tritonclient's serialization, not serve_app's
            message.raw_input_contents.append(serialize_byte_tensor(array).item())
        elif raw:
            message.raw_input_contents.append(array.tobytes())
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.ravel().tolist())
    return message


def decode_one(message: pb.ModelInferRequest) -> np.ndarray:
    """The one input (a BYTES input comes flat: the dataplane shapes it once its count is checked)."""
    [tensor] = decode_infer_request(message, LIMITS).inputs
    if tensor.datatype == "BYTES":
        assert tensor.array.ndim == 1
        return tensor.array.reshape(tensor.shape)
    assert tensor.shape == tensor.array.shape
    return tensor.array


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_contents_of_every_datatype(datatype: str) -> None:
    array = sample(datatype)
    decoded = decode_one(request(("x", array)))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", sorted(CONTENTS_FIELD))
def test_typed_contents_of_every_datatype_with_a_field(datatype: str) -> None:
    array = sample(datatype)
    decoded = decode_one(request(("x", array), raw=False))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_bytes_elements_that_do_not_fill_the_shape_are_kept_for_the_dataplane() -> None:
    """Triton's check stops one past the shape's count; the dataplane names the count."""
    message = request(("x", sample("BYTES", (3,))))
    message.inputs[0].shape[:] = [2]
    assert len(decode_infer_request(message, LIMITS).inputs[0].array) == 3  # 2 + 1
    message.inputs[0].shape[:] = [5]
    assert len(decode_infer_request(message, LIMITS).inputs[0].array) == 3


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        (
            b"\x03\x00\x00\x00ab",
            "incomplete string data for inference input 'x', expecting string of length 3 but only 2",
        ),
        (
            b"\x01\x00\x00\x00a\x02\x00",
            "incomplete string length indicator for inference input 'x' for model 'm'",
        ),
        (b"\xff\xff\xff\xff", "expecting string of length 4294967295 but only 0 bytes available"),
    ],
)
def test_malformed_length_prefixes_are_refused(raw: bytes, phrase: str) -> None:
    message = request(("x", sample("BYTES", (2,))))
    message.raw_input_contents[0] = raw
    bad(message, re.escape(phrase))


def test_bytes_elements_are_bounded_like_other_tensors() -> None:
    message = request(("x", sample("BYTES", (2,))))
    message.inputs[0].shape[:] = [LIMITS.max_bytes // 8]  # a pointer and an object per element
    bad(message, "would exceed the request's", PayloadTooLargeError)


def test_fp16_has_no_typed_field() -> None:
    assert set(CONTENTS_FIELD) == set(NUMPY_BY_DATATYPE) - {"FP16"}  # BYTES: bytes_contents
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP16", shape=[1]).contents.SetInParent()
    with pytest.raises(InvalidInputError, match="FP16 has no typed contents field"):
        decode_infer_request(message, LIMITS)
    message.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInputError, match="of type 'FP32', expected datatype 'FP16'"):
        decode_infer_request(message, LIMITS)


def test_tritonclient_request_decodes_with_its_fields() -> None:
    """What tritonclient.grpc sends: raw inputs, named outputs, id, version, parameters."""
    x = grpcclient.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(sample("FP32"))
    scale = grpcclient.InferInput("scale", [2, 1], "INT64")
    scale.set_data_from_numpy(sample("INT64", (2, 1)))
    message = pb.ModelInferRequest(model_name="multi", model_version="2", id="req-7")
    for tensor in (x, scale):
        message.inputs.append(tensor._get_tensor())
        message.raw_input_contents.append(tensor._get_content())
    message.outputs.append(grpcclient.InferRequestedOutput("out")._get_tensor())
    message.parameters["priority"].uint64_param = 2
    message.parameters["custom"].string_param = "yes"

    decoded = decode_infer_request(message, LIMITS)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("multi", "2", "req-7")
    assert [(t.name, t.datatype, t.shape) for t in decoded.inputs] == [
        ("x", "FP32", (2, 3)),
        ("scale", "INT64", (2, 1)),
    ]
    np.testing.assert_array_equal(decoded.inputs[1].array, sample("INT64", (2, 1)))
    assert decoded.outputs == [RequestedOutput("out", True)]
    assert decoded.parameters == {"priority": 2, "custom": "yes"}


def test_empty_fields_mean_latest_version_no_id_and_every_output() -> None:
    decoded = decode_infer_request(request(("x", sample("FP32"))), LIMITS)
    assert (decoded.model_version, decoded.id, decoded.outputs, decoded.parameters) == (None, None, None, {})
    assert decoded.binary_output


def test_raw_inputs_are_not_copied() -> None:
    message = request(("x", sample("FP32", (64, 16))))
    assert not decode_one(message).flags.owndata


def test_empty_tensor() -> None:
    assert decode_one(request(("x", np.zeros((0, 4), np.float32)))).shape == (0, 4)


def bad(message: pb.ModelInferRequest, phrase: str, error: type[Exception] = InvalidInputError) -> None:
    with pytest.raises(error, match=phrase):
        decode_infer_request(message, LIMITS)


def test_raw_contents_must_be_one_per_input() -> None:
    message = request(("x", sample("FP32")), ("y", sample("FP32")))
    del message.raw_input_contents[1]
    bad(message, r"^unable to find data for input tensor 'y' for model 'm' in request\.$")
    message.raw_input_contents.extend([b"", b""])
    bad(message, r"raw_input_contents has 3 entries for 2 inputs")
    del message.raw_input_contents[:]
    bad(message, r"^unable to find data for input tensor 'x' for model 'm' in request\.$")


def test_raw_and_typed_contents_do_not_mix() -> None:
    message = request(("x", sample("FP32")))
    message.inputs[0].contents.fp32_contents.append(1.0)
    bad(message, "^contents field must not be specified when using raw_input_contents for 'x' for model 'm'$")


def test_raw_size_must_match_the_shape() -> None:
    message = request(("x", sample("FP32")))
    message.raw_input_contents[0] = b"\0" * 10
    bad(message, r"^input byte size mismatch for input 'x' for model 'm'\. Expected 24, got 10$")


def test_typed_count_must_match_the_shape() -> None:
    message = request(("x", sample("INT32")), raw=False)
    message.inputs[0].contents.int_contents.append(1)
    bad(message, r"^input byte size mismatch for input 'x' for model 'm'\. Expected 24, got 28$")
    message = request(("x", sample("INT8")), raw=False)  # Triton counts INT8 in bytes, not int32s
    del message.inputs[0].contents.int_contents[0]
    bad(message, r"Expected 6, got 5$")


def test_typed_values_of_another_field_are_refused() -> None:
    message = request(("x", sample("INT32")), raw=False)
    message.inputs[0].datatype = "FP32"
    bad(
        message,
        "^unexpected explicit tensor data for input tensor 'x' for model 'm' of type 'INT32', "
        "expected datatype 'FP32'$",
    )


@pytest.mark.parametrize(
    ("datatype", "value"), [("INT8", 128), ("INT16", -40000), ("UINT8", 256), ("UINT16", 70000)]
)
def test_narrow_integers_out_of_range_are_refused(datatype: str, value: int) -> None:
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=[1])
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).append(value)
    bad(message, f"outside the range of {datatype}")


@pytest.mark.parametrize("datatype", ["BF16", "fp32"])
def test_unsupported_datatypes(datatype: str) -> None:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype=datatype, shape=[1])
    message.raw_input_contents.append(b"\0\0\0\0")
    bad(message, f"unsupported datatype '{datatype}'")


def test_shapes_are_bounded_before_anything_is_shaped() -> None:
    """A negative dim would make numpy infer it; 33 dims are more than numpy holds."""
    message = request(("x", sample("FP32")))
    message.inputs[0].shape[:] = [-1, 6]
    bad(message, "negative dimension")
    message.inputs[0].shape[:] = [1] * 33
    bad(message, "33 dimensions")
    message.inputs[0].shape[:] = [2**40, 2**20]
    bad(message, "would exceed", PayloadTooLargeError)


def test_message_over_the_limit_is_payload_too_large() -> None:
    message = request(("x", np.zeros((LIMITS.max_bytes // 4 + 1,), np.float32)))
    bad(message, r"exceeds the 1048576-byte limit", PayloadTooLargeError)


def test_too_many_tensors() -> None:
    message = pb.ModelInferRequest(model_name="m")
    for i in range(LIMITS.max_tensors + 1):
        message.outputs.add(name=f"o{i}")
    bad(message, "1025 outputs")


def test_extension_parameters_are_refused() -> None:
    message = request(("x", sample("FP32")))
    message.inputs[0].parameters["shared_memory_region"].string_param = "region"
    bad(message, "shared-memory extension")
    message = request(("x", sample("FP32")))
    message.outputs.append(grpcclient.InferRequestedOutput("out", class_count=3)._get_tensor())
    bad(message, "classification extension")


def test_an_output_requested_twice_is_refused() -> None:
    message = request(("x", sample("FP32")))
    message.outputs.add(name="out")
    message.outputs.add(name="out")
    bad(message, "requested more than once")


# --- parameters ----------------------------------------------------------------------------


def test_parameter_values_of_every_kind() -> None:
    message = pb.ModelInferRequest()
    message.parameters["b"].bool_param = True
    message.parameters["i"].int64_param = -3
    message.parameters["u"].uint64_param = 2**64 - 1
    message.parameters["d"].double_param = 0.5
    message.parameters["s"].string_param = "x"
    assert parameter_values(message.parameters) == {"b": True, "i": -3, "u": 2**64 - 1, "d": 0.5, "s": "x"}
    load = pb.RepositoryModelLoadRequest()
    load.parameters["file:1/model.pt"].bytes_param = b"\x01"
    assert parameter_values(load.parameters) == {"file:1/model.pt": b"\x01"}


def test_a_parameter_without_a_value_is_refused() -> None:
    message = pb.ModelInferRequest()
    message.parameters["empty"].SetInParent()
    with pytest.raises(InvalidInputError, match="parameter 'empty' has no value"):
        parameter_values(message.parameters)


@pytest.mark.parametrize("value", [True, False, 0, -1, 2**63 - 1, 2**64 - 1, 1.5, "text"])
def test_parameters_round_trip(value: object) -> None:
    message = pb.ModelInferResponse()
    set_parameter(message.parameters["p"], value)
    [decoded] = parameter_values(message.parameters).values()
    assert decoded == value and type(decoded) is type(value)


# --- responses -----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_response_of_every_datatype_reads_back_in_tritonclient(datatype: str) -> None:
    array = sample(datatype, (2, 2, 3))
    response = InferResponse("m", "1", [(RequestedOutput("out", True), array)], id="r1", parameters={"k": 1})
    result = grpcclient.InferResult(encode_infer_response(response))
    decoded = result.as_numpy("out")
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)
    message = result.get_response()
    assert (message.model_name, message.model_version, message.id) == ("m", "1", "r1")
    assert message.outputs[0].datatype == datatype and list(message.outputs[0].shape) == [2, 2, 3]
    assert parameter_values(message.parameters) == {"k": 1}


def test_response_outputs_keep_their_order_and_non_contiguous_arrays_are_packed() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T
    b = np.ones(2, np.int64)
    response = InferResponse("m", "1", [(RequestedOutput("b", True), b), (RequestedOutput("a", True), a)])
    message = encode_infer_response(response)
    assert [o.name for o in message.outputs] == ["b", "a"]
    assert message.id == "" and not message.parameters
    np.testing.assert_array_equal(grpcclient.InferResult(message).as_numpy("a"), a)


# --- documents as messages -----------------------------------------------------------------


def test_documents_become_messages_without_extra_keys() -> None:
    metadata = {"name": "serve_app", "version": "1", "extensions": ["statistics"], "serve_app": {"x": 1}}
    assert to_message(metadata, pb.ServerMetadataResponse) == pb.ServerMetadataResponse(
        name="serve_app", version="1", extensions=["statistics"]
    )
    index = to_message(
        {"models": [{"name": "broken", "version": None, "state": "UNAVAILABLE", "reason": "no file"}]},
        pb.RepositoryIndexResponse,
    )
    assert index.models[0] == pb.RepositoryIndexResponse.ModelIndex(
        name="broken", state="UNAVAILABLE", reason="no file"
    )


def test_model_config_document_round_trips(example_repository: Any) -> None:
    spec = load_model_spec(example_repository / "multi_io")
    message = to_message({"config": spec.config_dict()}, pb.ModelConfigResponse)
    assert message.config == spec.config


def test_messages_pickle_for_the_python_proxy() -> None:
    """Serve's Python gRPC proxy pickles each request to hand it to a replica."""
    message = request(("x", sample("FP32")), id="p")
    assert pickle.loads(pickle.dumps(message)) == message
