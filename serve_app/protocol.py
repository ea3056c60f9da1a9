"""KServe v2 / Triton HTTP protocol: request and response bodies, JSON and binary codecs.

Binary tensor extension (Triton's): the body is a JSON header followed by raw
tensor bytes; `Inference-Header-Content-Length` gives the header's length and each
binary tensor carries `parameters.binary_data_size`. Binary inputs are decoded
without copying (`np.frombuffer`); output bytes are copied once, into the response body.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from serve_app.datatypes import DATATYPE_BY_NUMPY, numpy_dtype
from serve_app.errors import InvalidInputError, PayloadTooLargeError

HEADER_LENGTH = "inference-header-content-length"


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputTensorBody(_Body):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestedOutputBody(_Body):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequestBody(_Body):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InputTensorBody]
    outputs: list[RequestedOutputBody] | None = None


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded request: numpy arrays keyed by input name, transport-free."""

    model_name: str
    model_version: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None  # None: all outputs
    binary_output: bool = False  # default for outputs not listed explicitly
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[tuple[RequestedOutput, np.ndarray]]
    id: str | None = None
    parameters: dict[str, Any] | None = None


# zlib window bits: gzip framing, and zlib framing (what tritonclient sends as "deflate").
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo the request compression tritonclient can apply (gzip or deflate).

    The decompressed body is held to `limit` as well, so a small compressed body
    cannot expand past max_request_bytes.
    """
    if not content_encoding or content_encoding == "identity":
        return body
    if content_encoding not in _WBITS:
        raise InvalidInputError(f"unsupported Content-Encoding '{content_encoding}'")
    decompressor = zlib.decompressobj(_WBITS[content_encoding])
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"cannot decompress {content_encoding} body: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLargeError(f"decompressed request body exceeds the {limit}-byte limit")
    if not decompressor.eof:
        raise InvalidInputError(f"cannot decompress {content_encoding} body: it is truncated")
    return data


def decode_request(
    model_name: str,
    model_version: str | None,
    body: bytes,
    header_length: str | None,
) -> InferRequest:
    """Parse a JSON or binary-extension request body into an `InferRequest`."""
    json_end = _header_length(header_length, len(body))
    try:
        header = InferRequestBody.model_validate(orjson.loads(body[:json_end]))
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"malformed JSON in request body: {exc}") from None
    except ValidationError as exc:
        raise InvalidInputError(f"invalid inference request: {_describe(exc)}") from None

    binary = memoryview(body)
    offset = json_end
    inputs = []
    for tensor in header.inputs:
        array, offset = _decode_input(tensor, binary, offset)
        inputs.append(InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), array))
    if offset != len(body):
        raise InvalidInputError(
            f"request body has {len(body) - offset} bytes not claimed by any binary_data_size"
        )
    parameters = dict(header.parameters or {})
    binary_output = bool(parameters.pop("binary_data_output", False))
    outputs = None
    if header.outputs:  # absent or empty: every output, as in Triton
        outputs = [_requested_output(o, binary_output) for o in header.outputs]
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"an output is requested more than once in {names}")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_output,
        id=header.id,
        parameters=parameters,
    )


def _requested_output(output: RequestedOutputBody, binary_default: bool) -> RequestedOutput:
    parameters = output.parameters or {}
    unsupported = sorted(set(parameters) - {"binary_data"})
    if unsupported:
        # e.g. tritonclient's class_count (classification) or shared-memory outputs.
        raise InvalidInputError(f"output '{output.name}': unsupported parameters {unsupported}")
    return RequestedOutput(output.name, bool(parameters.get("binary_data", binary_default)))


def _header_length(value: str | None, body_length: int) -> int:
    if value is None:
        return body_length
    try:
        length = int(value)
    except ValueError:
        raise InvalidInputError(f"Inference-Header-Content-Length '{value}' is not an integer") from None
    if not 0 < length <= body_length:
        raise InvalidInputError(
            f"Inference-Header-Content-Length {length} is outside the body of {body_length} bytes"
        )
    return length


def _decode_input(tensor: InputTensorBody, body: memoryview, offset: int) -> tuple[np.ndarray, int]:
    dtype = numpy_dtype(tensor.datatype)
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidInputError(f"input '{tensor.name}' has a negative dimension in {tensor.shape}")
    count = math.prod(tensor.shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise InvalidInputError(
                f"input '{tensor.name}': binary_data_size {size} does not match shape "
                f"{tensor.shape} of {tensor.datatype} ({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(body):
            raise InvalidInputError(f"input '{tensor.name}': binary data runs past the end of the body")
        array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        return array.reshape(tensor.shape), offset + size
    if tensor.data is None:
        raise InvalidInputError(f"input '{tensor.name}' has neither 'data' nor binary_data_size")
    array = _json_array(tensor, dtype)
    if array.size != count:
        raise InvalidInputError(
            f"input '{tensor.name}': {array.size} values given for shape {tensor.shape} ({count} values)"
        )
    return array.reshape(tensor.shape), offset


# What each datatype kind accepts from JSON, as numpy infers it and as Python types. As in
# Triton, 1.5 is not an INT32 and "1" or true is not an FP32, where numpy would convert them.
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_JSON_TYPES: dict[str, tuple[type, ...]] = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float)}


def _json_array(tensor: InputTensorBody, dtype: np.dtype) -> np.ndarray:
    """JSON `data` (flat or nested) as `dtype`; values of another kind or out of range are a 400."""
    try:
        values = np.asarray(tensor.data)
    except ValueError as exc:  # ragged nesting
        raise InvalidInputError(f"input '{tensor.name}': data is not {tensor.datatype}: {exc}") from None
    if values.size and values.dtype.kind not in _JSON_KINDS[dtype.kind]:
        # numpy infers float or object for integers beyond int64: judge the values themselves.
        values = np.asarray(tensor.data, dtype=object)
        if not all(type(v) in _JSON_TYPES[dtype.kind] for v in values.flat):
            raise InvalidInputError(
                f"input '{tensor.name}': data holds values that are not {tensor.datatype}"
            )
    if values.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if int(values.min()) < info.min or int(values.max()) > info.max:
            raise InvalidInputError(
                f"input '{tensor.name}': data holds values outside the range of {tensor.datatype}"
            )
    return values.astype(dtype)


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
    )


def encode_response(response: InferResponse) -> tuple[bytes, int | None]:
    """Render a response; returns the body and, for binary bodies, the JSON header's length."""
    chunks: list[bytes | np.ndarray] = []
    outputs = []
    for requested, array in response.outputs:
        entry: dict[str, Any] = {
            "name": requested.name,
            "datatype": DATATYPE_BY_NUMPY[array.dtype],
            "shape": list(array.shape),
        }
        if requested.binary:
            # A byte view: the join below is the one copy (tobytes() would make a second).
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            entry["parameters"] = {"binary_data_size": data.nbytes}
            chunks.append(data)
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        outputs.append(entry)
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    json_header = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return json_header, None
    return b"".join([json_header, *chunks]), len(json_header)
