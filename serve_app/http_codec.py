"""The KServe v2 / Triton HTTP codec: request and response bodies, JSON and binary.

Binary tensor extension (Triton's): the body is a JSON header followed by raw
tensor bytes; `Inference-Header-Content-Length` gives the header's length and each
binary tensor carries `parameters.binary_data_size`. Binary inputs are decoded
without copying (`np.frombuffer`); output bytes are copied once, into the response body.
A header length of 0 is Triton's raw binary request: the body is the bytes of the model's
one input, which the dataplane shapes once the model's signature is known.

Everything a body makes the server hold is bounded by `Limits` before it is allocated.
"""

from __future__ import annotations

import zlib
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

from serve_app.bytes_tensors import ELEMENT_HELD, OBJECT, as_array, deserialize, held_bytes, serialize
from serve_app.datatypes import DATATYPE_BY_NUMPY, numpy_dtype
from serve_app.errors import InvalidInputError, PayloadTooLargeError
from serve_app.infer_types import (
    Buffer,
    InferRequest,
    InferResponse,
    InputTensor,
    Limits,
    RequestedOutput,
    element_count,
    flag,
    requested_output,
    tensor_parameters,
)

HEADER_LENGTH = "inference-header-content-length"


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputTensorBody(_Body):
    name: str
    datatype: str
    shape: list[StrictInt]  # 1.0, "1" and true are not dimensions
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


_OPTIONAL_STR = (str, type(None))
_OPTIONAL_DICT = (dict, type(None))


def _well_formed(document: dict[str, Any]) -> bool:
    """Whether `InferRequestBody` takes this parsed JSON document as it is.

    Exactly pydantic's rules for what JSON can hold (where pydantic would coerce, JSON has no
    such value), so a well-formed request skips its validation (a cost on every tiny request)
    and only a malformed one goes through it, for its message.
    """
    inputs = document.get("inputs")
    outputs = document.get("outputs")
    if (
        type(inputs) is not list
        or type(document.get("id")) not in _OPTIONAL_STR
        or type(document.get("parameters")) not in _OPTIONAL_DICT
        or type(outputs) not in (list, type(None))
    ):
        return False
    for tensor in inputs:
        if (
            type(tensor) is not dict
            or type(tensor.get("name")) is not str
            or type(tensor.get("datatype")) is not str
            or type(tensor.get("parameters")) not in _OPTIONAL_DICT
        ):
            return False
        shape = tensor.get("shape")
        if type(shape) is not list:
            return False
        for dim in shape:
            if type(dim) is not int:  # StrictInt: not a bool, not 2.0
                return False
    for output in outputs or ():
        if (
            type(output) is not dict
            or type(output.get("name")) is not str
            or type(output.get("parameters")) not in _OPTIONAL_DICT
        ):
            return False
    return True


class RepositoryIndexBody(_Body):
    ready: StrictBool = False


class ModelControlBody(_Body):
    """Load (config and file overrides) and unload (unload_dependents) parameters."""

    parameters: dict[str, Any] | None = None


# zlib window bits: gzip framing, and zlib framing (what tritonclient sends as "deflate").
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: Buffer, content_encoding: str | None, limit: int) -> Buffer:
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


_Schema = TypeVar("_Schema", bound=_Body)


def _parse_json(raw: Buffer, what: str) -> dict[str, Any]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"malformed JSON in request body: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"invalid {what}: the body must be a JSON object")
    return document


def _validate(schema: type[_Schema], document: dict[str, Any], what: str) -> _Schema:
    try:
        return schema.model_validate(document)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid {what}: {_describe(exc)}") from None


def decode_body(body: Buffer, schema: type[_Schema], what: str) -> _Schema:
    """A small JSON control body (repository index, load, unload); an empty one takes the defaults."""
    raw = bytes(body)
    if not raw.strip():
        return schema()
    return _validate(schema, _parse_json(raw, what), what)


def json_length(header_length: str | None, body_length: int) -> int:
    """The JSON part of a body: all of it, or `Inference-Header-Content-Length` (0: raw binary)."""
    if header_length is None:
        return body_length
    # ASCII digits only: int() would also take " 1", "1_0" and other scripts' digits.
    if not (header_length.isascii() and header_length.isdigit()):
        raise InvalidInputError(f"Inference-Header-Content-Length '{header_length[:40]}' is not an integer")
    length = int(header_length)
    if length > body_length:
        raise InvalidInputError(
            f"Inference-Header-Content-Length {length} is outside the body of {body_length} bytes"
        )
    return length


def decode_request(
    model_name: str,
    model_version: str | None,
    body: Buffer,
    header_length: str | None,
    *,
    limits: Limits,
) -> InferRequest:
    """Parse a JSON, binary-extension or raw binary request body into an `InferRequest`."""
    json_end = json_length(header_length, len(body))
    binary = memoryview(body)
    if json_end == 0 and header_length is not None:  # raw binary: all outputs binary, as in Triton
        return InferRequest(model_name, model_version, [], binary_output=True, raw_input=binary)
    document = _parse_json(binary[:json_end], "inference request")
    for key in ("inputs", "outputs"):
        tensors = document.get(key)
        if isinstance(tensors, list) and len(tensors) > limits.max_tensors:
            raise InvalidInputError(
                f"request has {len(tensors)} {key}; at most {limits.max_tensors} are accepted"
            )
    if not _well_formed(document):
        # pydantic's message says what is wrong; were it to take the document, its reading is decoded.
        document = _validate(InferRequestBody, document, "inference request").model_dump()

    offset = json_end
    budget = limits.max_bytes
    inputs = []
    for tensor in document["inputs"]:
        array, offset = _decode_input(model_name, tensor, binary, offset, budget, limits, header_length)
        if array.dtype is not OBJECT:
            budget -= array.nbytes
            inputs.append(InputTensor(tensor["name"], tensor["datatype"], array.shape, array))
        else:  # BYTES: its elements, flat; the dataplane checks their count against the shape
            budget -= held_bytes(array)
            inputs.append(InputTensor(tensor["name"], tensor["datatype"], tuple(tensor["shape"]), array))
    if offset != len(body):
        raise InvalidInputError(
            f"unexpected additional input data for model '{model_name}': {len(body) - offset} bytes "
            "not claimed by any binary_data_size"
        )
    parameters = dict(document.get("parameters") or {})
    binary_output = flag(
        parameters.pop("binary_data_output", False), "request parameter 'binary_data_output'"
    )
    outputs = None
    if document.get("outputs"):  # absent or empty: every output, as in Triton
        # As in Triton, binary_data_output is the default of the outputs not named; a named
        # output is binary only with its own binary_data: true.
        outputs = [requested_output(o["name"], o.get("parameters"), False) for o in document["outputs"]]
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"an output is requested more than once in {names}")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_output,
        id=document.get("id"),
        parameters=parameters,
    )


# Triton's text for an input that gives its data in no place, or in two.
_CONTENT_FIELDS = (
    "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
    "'shared_memory_region' in 'parameters'. But"
)
_JSON_SHAPE_MISMATCH = "Unable to parse 'data': Shape does not match true shape of 'data' field"


def _decode_input(
    model: str,
    tensor: dict[str, Any],
    body: memoryview,
    offset: int,
    budget: int,
    limits: Limits,
    header_length: str | None,
) -> tuple[np.ndarray, int]:
    """A well-formed input tensor (see `_well_formed`): its binary data or its JSON `data`."""
    name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
    dtype = numpy_dtype(datatype)
    bytes_tensor = dtype is OBJECT
    count = element_count(
        name, datatype, shape, ELEMENT_HELD if bytes_tensor else dtype.itemsize, budget, limits
    )
    size = tensor_parameters("input", name, tensor.get("parameters")).get("binary_data_size")
    data = tensor.get("data")
    if size is not None:
        if type(size) is not int or size < 0:  # bool is an int to Python, not to Triton
            raise InvalidInputError(
                f"Unable to parse 'binary_data_size': input '{name}' has {size!r}, not an unsigned integer"
            )
        if data is not None:
            raise InvalidInputError(f"{_CONTENT_FIELDS} set 'data' 'binary_data_size'")
        if header_length is None and size:
            raise InvalidInputError(
                "must specify valid 'Infer-Header-Content-Length' in request header and "
                "'binary_data_size' when passing inputs in binary data format"
            )
        if offset + size > len(body):
            raise InvalidInputError(
                f"unexpected size for input '{name}', expecting {offset + size - len(body)} additional "
                f"bytes for model '{model}'"
            )
        if bytes_tensor:  # Triton's length-prefixed elements, one more than the shape's at most
            return deserialize(body[offset : offset + size], count + 1, name, model), offset + size
        if size != count * dtype.itemsize:
            raise InvalidInputError(
                f"input byte size mismatch for input '{name}' for model '{model}'. "
                f"Expected {count * dtype.itemsize}, got {size}"
            )
        array = np.frombuffer(body, dtype, count, offset)  # positional: keywords cost 0.4 µs more
        return array.reshape(shape), offset + size
    if data is None:
        raise InvalidInputError(f"{_CONTENT_FIELDS} no field is set")
    if bytes_tensor:
        return _json_strings(name, data), offset
    array = _json_array(name, datatype, data, dtype)
    if array.size != count:
        raise InvalidInputError(_JSON_SHAPE_MISMATCH)
    return array.reshape(shape), offset


# What each datatype kind accepts from JSON, as numpy infers it and as Python types. As in
# Triton, 1.5 is not an INT32 and "1" or true is not an FP32, where numpy would convert them.
_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_JSON_TYPES: dict[str, tuple[type, ...]] = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float)}


def _json_array(name: str, datatype: str, data: Any, dtype: np.dtype) -> np.ndarray:
    """JSON `data` (flat or nested) as `dtype`; values of another kind or out of range are a 400."""
    try:
        values = np.asarray(data)
    except ValueError as exc:  # ragged nesting, or deeper than numpy's 32 dimensions
        raise InvalidInputError(
            f"Unable to parse 'data': input '{name}': data is not {datatype}: {exc}"
        ) from None
    if values.size and values.dtype.kind not in _JSON_KINDS[dtype.kind]:
        # numpy infers float or object for integers beyond int64: judge the values themselves.
        values = np.asarray(data, dtype=object)
        if not all(type(v) in _JSON_TYPES[dtype.kind] for v in values.flat):
            raise InvalidInputError(
                f"Unable to parse 'data': input '{name}' holds values that are not {datatype}"
            )
    if values.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if int(values.min()) < info.min or int(values.max()) > info.max:
            raise InvalidInputError(
                f"Unable to parse 'data': input '{name}' holds values outside the range of {datatype}"
            )
    # Floats past FP16/FP32's range become +-inf, as Triton's C++ casts make them (numpy warns).
    return values.astype(dtype)


def _json_strings(name: str, data: Any) -> np.ndarray:
    """BYTES from JSON: strings (in nested lists or not), each element its UTF-8 bytes, flat.

    Walked with a stack, not recursion: JSON may nest deeper than Python recurses.
    """
    values: list[bytes] = []
    stack = [iter((data,))]
    while stack:
        for item in stack[-1]:
            if type(item) is list:
                stack.append(iter(item))
                break
            if type(item) is not str:
                raise InvalidInputError(
                    f"Unable to parse 'data': input '{name}' holds values that are not BYTES (JSON strings)"
                )
            values.append(item.encode())
        else:
            stack.pop()
    return as_array(values)


_DESCRIBED_ERRORS = 5  # a body of 1024 bad inputs gets a message, not a 1024-line one


def _describe(exc: ValidationError) -> str:
    errors = exc.errors()
    described = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
        for err in errors[:_DESCRIBED_ERRORS]
    )
    more = len(errors) - _DESCRIBED_ERRORS
    return f"{described}; and {more} more" if more > 0 else described


def _encode_bytes(
    requested: RequestedOutput, array: np.ndarray, entry: dict[str, Any], chunks: list[bytes | np.ndarray]
) -> None:
    """A BYTES output: Triton's length-prefixed elements when binary, else JSON strings."""
    if requested.binary:
        data = serialize(array.flat)
        entry["parameters"] = {"binary_data_size": len(data)}
        chunks.append(data)
        return
    try:
        entry["data"] = [value.decode() for value in array.flat]
    except UnicodeDecodeError:
        raise InvalidInputError(
            f"output '{requested.name}' holds bytes that are not UTF-8 text, which JSON cannot carry: "
            'request it with "binary_data": true'
        ) from None


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
        if array.dtype is OBJECT:
            _encode_bytes(requested, array, entry, chunks)
        elif requested.binary:
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
