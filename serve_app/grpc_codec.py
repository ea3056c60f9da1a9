"""Triton's gRPC messages (`tritonclient.grpc.service_pb2`) ⇄ the transport-free types.

Input tensors arrive either as `raw_input_contents` (one little-endian buffer per input, in
input order: what tritonclient sends; decoded without copying) or as typed `contents`
(`fp32_contents`, `int_contents`, ...). Outputs always go back as `raw_output_contents`, as
Triton's own gRPC server returns them. The tensor rules the HTTP codec applies (bounded shapes,
refused extension parameters) come from `infer_types.py`, so both wire formats accept the same
requests; everything about the model (names, datatypes, shapes) is the dataplane's to check.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as pb

from serve_app.bytes_tensors import ELEMENT_HELD, OBJECT, as_array, deserialize, held_bytes, serialize
from serve_app.datatypes import DATATYPE_BY_NUMPY, numpy_dtype
from serve_app.errors import InvalidInputError, PayloadTooLargeError
from serve_app.infer_types import (
    InferRequest,
    InferResponse,
    InputTensor,
    Limits,
    element_count,
    requested_output,
    tensor_parameters,
)

# tritonclient generated service_pb2 from grpc_service.proto, so its message classes name a
# module `grpc_service_pb2` that does not exist, and cannot be pickled: Serve's Python gRPC proxy
# (the stock request path, and HAProxy's fallback while no replica is up) pickles each request
# to hand it to a replica, and fails with "import of module 'grpc_service_pb2' failed". The alias
# makes them picklable in every process that imports this module (replicas, and the proxies
# through `grpc_api.add_servicer_to_server`).
sys.modules.setdefault("grpc_service_pb2", pb)

# The typed `InferTensorContents` field each datatype travels in (narrow integers share the
# 32-bit fields); FP16 has none, so it must be raw. BF16 is refused by numpy_dtype.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_FIELD_TYPE = {
    "bool_contents": "BOOL",
    "int_contents": "INT32",
    "int64_contents": "INT64",
    "uint_contents": "UINT32",
    "uint64_contents": "UINT64",
    "fp32_contents": "FP32",
    "fp64_contents": "FP64",
    "bytes_contents": "BYTES",
}
_FIELD_DTYPE: dict[str, np.dtype] = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}

Parameters = Mapping[str, pb.InferParameter] | Mapping[str, pb.ModelRepositoryParameter]
_Message = TypeVar("_Message", bound=Message)


def parameter_values(parameters: Parameters) -> dict[str, Any]:
    """A protobuf parameter map as plain values (the oneof that is set in each entry)."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            raise InvalidInputError(f"parameter '{key}' has no value")
        values[key] = getattr(parameter, choice)
    return values


def set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    """A plain value into an `InferParameter` (bool before int: a bool is an int to Python)."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        if value < 2**63:
            parameter.int64_param = value
        else:
            parameter.uint64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value


def decode_infer_request(message: pb.ModelInferRequest, limits: Limits) -> InferRequest:
    """A `ModelInferRequest` as an `InferRequest`; every output comes back raw."""
    size = message.ByteSize()
    if size > limits.max_bytes:
        raise PayloadTooLargeError(f"request of {size} bytes exceeds the {limits.max_bytes}-byte limit")
    for kind, tensors in (("inputs", message.inputs), ("outputs", message.outputs)):
        if len(tensors) > limits.max_tensors:
            raise InvalidInputError(
                f"request has {len(tensors)} {kind}; at most {limits.max_tensors} are accepted"
            )
    raw = message.raw_input_contents
    if len(raw) > len(message.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; "
            "send one per input, or none and typed contents"
        )
    budget = limits.max_bytes
    inputs = []
    for index, tensor in enumerate(message.inputs):
        array = _decode_input(message, tensor, index, budget, limits)
        if array.dtype is not OBJECT:
            budget -= array.nbytes
            inputs.append(InputTensor(tensor.name, tensor.datatype, array.shape, array))
        else:  # BYTES: its elements, flat; the dataplane checks their count against the shape
            budget -= held_bytes(array)
            inputs.append(InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), array))
    outputs = [
        requested_output(output.name, parameter_values(output.parameters), True) for output in message.outputs
    ]
    names = [output.name for output in outputs]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"an output is requested more than once in {names}")
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        inputs=inputs,
        outputs=outputs or None,  # none named: every output, as in Triton
        binary_output=True,
        id=message.id or None,
        parameters=parameter_values(message.parameters),
    )


def _byte_size_mismatch(name: str, model: str, expected: int, got: int) -> InvalidInputError:
    return InvalidInputError(
        f"input byte size mismatch for input '{name}' for model '{model}'. Expected {expected}, got {got}"
    )


def _decode_input(
    message: pb.ModelInferRequest,
    tensor: pb.ModelInferRequest.InferInputTensor,
    index: int,
    budget: int,
    limits: Limits,
) -> np.ndarray:
    """One input from `raw_input_contents[index]` or its typed contents, with Triton's texts."""
    model = message.model_name
    dtype = numpy_dtype(tensor.datatype)
    bytes_tensor = dtype is OBJECT
    shape = tuple(tensor.shape)
    tensor_parameters("input", tensor.name, parameter_values(tensor.parameters))
    count = element_count(
        tensor.name,
        tensor.datatype,
        list(shape),
        ELEMENT_HELD if bytes_tensor else dtype.itemsize,
        budget,
        limits,
    )
    raw = message.raw_input_contents
    if raw:
        if tensor.HasField("contents"):
            raise InvalidInputError(
                f"contents field must not be specified when using raw_input_contents for '{tensor.name}' "
                f"for model '{model}'"
            )
        if index >= len(raw):
            raise InvalidInputError(
                f"unable to find data for input tensor '{tensor.name}' for model '{model}' in request."
            )
        if bytes_tensor:  # Triton's length-prefixed elements, one more than the shape's at most
            return deserialize(raw[index], count + 1, tensor.name, model)
        if len(raw[index]) != count * dtype.itemsize:
            raise _byte_size_mismatch(tensor.name, model, count * dtype.itemsize, len(raw[index]))
        return np.frombuffer(raw[index], dtype).reshape(shape)
    if not tensor.HasField("contents"):
        raise InvalidInputError(
            f"unable to find data for input tensor '{tensor.name}' for model '{model}' in request."
        )
    field = CONTENTS_FIELD.get(tensor.datatype)
    for given, _ in tensor.contents.ListFields():
        if given.name != field:
            raise InvalidInputError(
                f"unexpected explicit tensor data for input tensor '{tensor.name}' for model '{model}' of "
                f"type '{_contents_type(given.name, tensor.datatype)}', expected datatype '{tensor.datatype}'"
            )
    if field is None:
        raise InvalidInputError(
            f"input '{tensor.name}': {tensor.datatype} has no typed contents field; "
            "send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if bytes_tensor:
        return as_array(list(values))
    if len(values) != count:
        raise _byte_size_mismatch(tensor.name, model, count * dtype.itemsize, len(values) * dtype.itemsize)
    array = np.array(values, dtype=_FIELD_DTYPE[field])
    if dtype != array.dtype and array.size:
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise InvalidInputError(
                f"input '{tensor.name}': contents.{field} holds values outside the range of {tensor.datatype}"
            )
    return array.astype(dtype, copy=False).reshape(shape)


def _contents_type(field: str, datatype: str) -> str:
    """The datatype Triton reads a typed contents field as: the request's own where the field
    carries it (int_contents for INT8 and INT16), else the field's own type."""
    if CONTENTS_FIELD.get(datatype) == field:
        return datatype
    return _FIELD_TYPE[field]


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for requested, array in response.outputs:
        message.outputs.add(name=requested.name, datatype=DATATYPE_BY_NUMPY[array.dtype], shape=array.shape)
        if array.dtype is OBJECT:  # BYTES: Triton's length-prefixed elements
            message.raw_output_contents.append(serialize(array.flat))
        else:
            message.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    for key, value in (response.parameters or {}).items():
        set_parameter(message.parameters[key], value)
    return message


def to_message(document: Mapping[str, Any], message_type: type[_Message]) -> _Message:
    """A dataplane document (metadata, config, statistics, index) as its gRPC message.

    The documents are Triton's JSON renderings of these messages, so field names match; keys
    a message has no field for (the `serve_app` block of the server metadata) are left out.
    """
    return json_format.ParseDict(document, message_type(), ignore_unknown_fields=True)
