"""Property-based fuzzing of the codecs: whatever arrives, decoding returns a request or refuses it
with InvalidInputError / PayloadTooLargeError (a 4xx), never another exception (a 500); and valid
tensors survive encode → decode exactly, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from serve_app import http_codec
from serve_app.bytes_tensors import OBJECT, as_array, held_bytes
from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.errors import InvalidInputError, PayloadTooLargeError
from serve_app.infer_types import InferRequest, InferResponse, Limits, RequestedOutput
from serve_app.repository import ModelSignature, TensorSpec
from serve_app.request_checks import resolve_raw_input

# JSON floats past FP16/FP32's range become inf, as in Triton; numpy's warning about it is expected.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")

# Small bounds, so that fuzzed requests reach them; no example database written into the checkout.
LIMITS = Limits(max_bytes=4096, max_tensors=8)
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
REFUSALS = (InvalidInputError, PayloadTooLargeError)
# The datatypes whose tensors are one buffer (BYTES tensors are object arrays of `bytes`).
NUMERIC = {name: dtype for name, dtype in NUMPY_BY_DATATYPE.items() if dtype is not OBJECT}

# Any JSON value, including what orjson refuses (NaN, Infinity) and integers past 64 bits.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=4),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
dimensions = st.integers(min_value=-2, max_value=6) | st.integers(min_value=-(2**65), max_value=2**65)
shapes = st.lists(st.integers(min_value=0, max_value=4), max_size=3) | st.lists(
    dimensions | json_values, max_size=40
)
datatypes = st.sampled_from([*NUMPY_BY_DATATYPE, "BYTES", "BF16", "fp32", ""]) | json_values
parameter_keys = st.sampled_from(
    ["binary_data_size", "binary_data", "binary_data_output", "shared_memory_region", "classification", "k"]
)
parameters = (
    st.none()
    | json_values
    | st.dictionaries(parameter_keys, json_values | st.integers(min_value=-1, max_value=64), max_size=3)
)
data = json_values | st.lists(st.integers(-(2**65), 2**65) | st.floats() | st.booleans(), max_size=24)
tensors = st.fixed_dictionaries(
    {"name": st.text(max_size=3) | json_values, "datatype": datatypes, "shape": shapes},
    optional={"data": data, "parameters": parameters},
)
outputs = st.fixed_dictionaries({"name": st.text(max_size=2)}, optional={"parameters": parameters})
requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=10) | json_values},
    optional={"outputs": st.lists(outputs) | json_values, "parameters": parameters, "id": json_values},
)
header_lengths = (
    st.none() | st.sampled_from(["0", "-1", "x", " 1", "1_0", "99999"]) | st.integers(0, 200).map(str)
)
# Per tensor, values of one kind (so that some pass the kind checks) or of every kind.
value_kinds = st.sampled_from(
    [
        st.integers(-(2**65), 2**65),
        st.integers(-300, 300),
        st.floats(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.integers(-(2**65), 2**65) | st.floats() | st.booleans() | st.none() | st.text(max_size=1),
    ]
)


@st.composite
def near_valid_tensors(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A tensor that is well formed but for a detail or two, and the binary bytes it claims."""
    shape = draw(
        st.lists(st.integers(0, 3), max_size=3)
        | st.lists(st.integers(0, 1), min_size=30, max_size=40)  # around numpy's 32 dimensions
        | st.lists(st.sampled_from([0, 1, 2**31, 2**62, 2**63]), max_size=4)  # past numpy's sizes
    )
    datatype = draw(st.sampled_from(list(NUMPY_BY_DATATYPE)))
    count = math.prod(shape)
    tensor: dict[str, Any] = {"name": draw(st.sampled_from("ab")), "datatype": datatype, "shape": shape}
    if draw(st.booleans()):  # binary, its size right or nearly so
        size = count * NUMPY_BY_DATATYPE[datatype].itemsize + draw(st.sampled_from([0, 0, 0, 1, -1]))
        tensor["parameters"] = {"binary_data_size": size}
        claimed = size if 0 <= size <= 2 * LIMITS.max_bytes else 0  # no terabytes of tail
        return tensor, draw(st.binary(min_size=claimed, max_size=claimed))
    length = draw(st.sampled_from([count, count, count, count + 1, max(count - 1, 0)]))
    values = draw(st.lists(draw(value_kinds), min_size=length, max_size=length)) if length <= 64 else []
    nested = length == count and 0 < len(shape) <= 3 and max(shape) <= 3 and draw(st.booleans())
    tensor["data"] = np.array(values, dtype=object).reshape(shape).tolist() if nested else values
    return tensor, b""


def decode(body: bytes, header_length: str | None) -> InferRequest | None:
    """Decode, or None where the body was refused with a 4xx; anything else propagates and fails."""
    try:
        request = http_codec.decode_request("m", None, body, header_length, limits=LIMITS)
    except REFUSALS:
        return None
    # What was accepted respects its bounds: declared shapes, and the byte limit over all inputs
    # (BYTES: their elements come flat, at most one past the shape's count, as Triton's check stops).
    assert len(request.inputs) <= LIMITS.max_tensors
    assert sum(held_bytes(t.array) for t in request.inputs) <= LIMITS.max_bytes
    for tensor in request.inputs:
        assert len(tensor.shape) <= LIMITS.max_dims
        assert tensor.array.dtype == NUMPY_BY_DATATYPE[tensor.datatype]
        if tensor.array.dtype is OBJECT:
            assert tensor.array.ndim == 1 and all(type(v) is bytes for v in tensor.array)
        else:
            assert tensor.array.shape == tensor.shape
    return request


@FUZZ
@given(body=st.binary(max_size=512), header_length=header_lengths)
def test_arbitrary_bytes_decode_or_are_refused(body: bytes, header_length: str | None) -> None:
    decode(body, header_length)


@FUZZ
@given(
    request=requests,
    tail=st.binary(max_size=64),
    header_length=header_lengths,
    exact_header=st.booleans(),
)
def test_request_shaped_json_decodes_or_is_refused(
    request: dict[str, Any], tail: bytes, header_length: str | None, exact_header: bool
) -> None:
    header = json.dumps(request).encode()  # the stdlib writes NaN and integers past 64 bits
    decode(header + tail, str(len(header)) if exact_header else header_length)


@FUZZ
@given(tensors=st.lists(near_valid_tensors(), min_size=1, max_size=3), binary_output=st.booleans())
def test_nearly_valid_requests_decode_or_are_refused(
    tensors: list[tuple[dict[str, Any], bytes]], binary_output: bool
) -> None:
    header = json.dumps(
        {"inputs": [t for t, _ in tensors], "parameters": {"binary_data_output": binary_output}}
    ).encode()
    decode(header + b"".join(tail for _, tail in tensors), str(len(header)))


@FUZZ
@given(
    array=hnp.arrays(st.sampled_from(list(NUMERIC.values())), hnp.array_shapes(min_dims=0, max_side=3)),
    declared=st.integers(-4, 4),
    tail=st.integers(-4, 4),
)
def test_binary_sizes_off_by_a_few_are_refused_not_crashed(
    array: np.ndarray, declared: int, tail: int
) -> None:
    tensor = {
        "name": "x",
        "datatype": _datatype(array.dtype),
        "shape": list(array.shape),
        "parameters": {"binary_data_size": array.nbytes + declared},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    raw = array.tobytes()
    body = header + (raw + bytes(tail) if tail >= 0 else raw[:tail])
    request = decode(body, str(len(header)))
    assert (request is not None) == (declared == 0 and tail == 0)


def _datatype(dtype: np.dtype) -> str:
    return next(name for name, candidate in NUMPY_BY_DATATYPE.items() if candidate == dtype)


def bytes_arrays(text: bool) -> st.SearchStrategy[np.ndarray]:
    """BYTES tensors of any bytes (binary) or of UTF-8 text (JSON carries strings)."""
    element = st.text(max_size=6).map(str.encode) if text else st.binary(max_size=6)

    def shaped(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
        count = math.prod(shape)
        return st.lists(element, min_size=count, max_size=count).map(
            lambda values: as_array(values).reshape(shape)
        )

    return hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3).flatmap(shaped)


def _finite_elements(dtype: np.dtype) -> st.SearchStrategy[Any] | None:
    """JSON has no NaN or Infinity: the tensors it carries are finite."""
    if dtype.kind == "f":
        return st.floats(allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    return None


def valid_arrays(finite: bool) -> st.SearchStrategy[np.ndarray]:
    def for_dtype(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
        shape = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
        return hnp.arrays(dtype, shape, elements=_finite_elements(dtype) if finite else None)

    return st.sampled_from(list(NUMERIC.values())).flatmap(for_dtype)


def assert_exact(decoded: np.ndarray, original: np.ndarray) -> None:
    if original.dtype is OBJECT:  # BYTES: decoded flat (the dataplane shapes it)
        assert decoded.dtype is OBJECT and decoded.reshape(original.shape).tolist() == original.tolist()
        return
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert decoded.tobytes() == original.tobytes()  # bit for bit: -0.0, NaN payloads, FP16


@FUZZ
@given(arrays=st.lists(valid_arrays(finite=True), min_size=1, max_size=3), binary=st.lists(st.booleans()))
def test_tritonclient_requests_round_trip_exactly(arrays: list[np.ndarray], binary: list[bool]) -> None:
    inputs = []
    for i, array in enumerate(arrays):
        tensor = httpclient.InferInput(f"x{i}", list(array.shape), _datatype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary[i] if i < len(binary) else True)
        inputs.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    request = http_codec.decode_request(
        "m", None, body, None if json_size is None else str(json_size), limits=LIMITS
    )
    assert [t.name for t in request.inputs] == [f"x{i}" for i in range(len(arrays))]
    for tensor, array in zip(request.inputs, arrays, strict=True):
        assert_exact(tensor.array, array)


@FUZZ
@given(binary=bytes_arrays(text=False), text=bytes_arrays(text=True))
def test_tritonclient_bytes_round_trip_exactly(binary: np.ndarray, text: np.ndarray) -> None:
    """BYTES: any bytes in binary (Triton's length prefixes), strings in JSON."""
    inputs = []
    for name, array, binary_data in (("b", binary, True), ("t", text, False)):
        tensor = httpclient.InferInput(name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array, binary_data=binary_data)
        inputs.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    request = http_codec.decode_request(
        "m", None, body, None if json_size is None else str(json_size), limits=LIMITS
    )
    assert_exact(request.inputs[0].array, binary)
    assert_exact(request.inputs[1].array, text)


@FUZZ
@given(array=valid_arrays(finite=False))
def test_binary_inputs_round_trip_exactly_even_nan(array: np.ndarray) -> None:
    tensor = httpclient.InferInput("x", list(array.shape), _datatype(array.dtype))
    tensor.set_data_from_numpy(array)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    assert_exact(
        http_codec.decode_request("m", None, body, str(json_size), limits=LIMITS).inputs[0].array, array
    )


@FUZZ
@given(
    outputs=st.lists(
        st.tuples(valid_arrays(finite=True), st.booleans())
        | st.tuples(bytes_arrays(text=False), st.just(True))
        | st.tuples(bytes_arrays(text=True), st.just(False)),
        min_size=1,
        max_size=3,
    )
)
def test_responses_round_trip_exactly_through_tritonclient(outputs: list[tuple[np.ndarray, bool]]) -> None:
    response = InferResponse(
        "m", "1", [(RequestedOutput(f"y{i}", binary), array) for i, (array, binary) in enumerate(outputs)]
    )
    body, header_length = http_codec.encode_response(response)
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    for i, (array, binary) in enumerate(outputs):
        got = result.as_numpy(f"y{i}")
        if array.dtype is OBJECT and not binary:  # JSON strings: tritonclient gives them as str
            got = as_array([v.encode() for v in got.flat]).reshape(got.shape)
        assert_exact(got, array)


@FUZZ
@given(
    body=st.binary(max_size=256) | st.binary(max_size=256).map(zlib.compress),
    encoding=st.sampled_from(["gzip", "deflate", "identity", "br", "GZIP"]) | st.none(),
)
def test_arbitrary_compressed_bodies_decompress_or_are_refused(body: bytes, encoding: str | None) -> None:
    with contextlib.suppress(REFUSALS):
        assert len(http_codec.decompress(body, encoding, limit=512)) <= max(512, len(body))


@FUZZ
@given(payload=st.binary(max_size=2048), encoding=st.sampled_from(["gzip", "deflate"]))
def test_compression_round_trips(payload: bytes, encoding: str) -> None:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    compressor = zlib.compressobj(wbits=wbits)
    body = compressor.compress(payload) + compressor.flush()
    assert http_codec.decompress(body, encoding, limit=2048) == payload


@FUZZ
@given(
    body=st.binary(max_size=64),
    inputs=st.lists(
        st.tuples(
            st.sampled_from([*NUMPY_BY_DATATYPE, "BYTES"]),
            st.lists(st.integers(-1, 4), max_size=3).map(tuple),
        ),
        max_size=2,
    ),
    max_batch_size=st.sampled_from([0, 4]),
)
def test_raw_inputs_resolve_or_are_refused(
    body: bytes, inputs: list[tuple[str, tuple[int, ...]]], max_batch_size: int
) -> None:
    specs = tuple(TensorSpec(f"x{i}", datatype, dims) for i, (datatype, dims) in enumerate(inputs))
    signature = ModelSignature("raw", max_batch_size, specs, ())
    raw = http_codec.decode_request("m", None, body, "0", limits=LIMITS)
    try:
        [tensor] = resolve_raw_input(raw, signature).inputs
    except InvalidInputError:
        return
    assert tensor.array.shape == tensor.shape
    if tensor.array.dtype is OBJECT:  # BYTES: the body is the one element
        assert tensor.array.reshape(-1).tolist() == [body]
    else:
        assert tensor.array.tobytes() == body
    expected = specs[0].dims
    dims = tensor.shape[1:] if max_batch_size else tensor.shape
    assert len(dims) == len(expected) and all(e in (-1, d) for e, d in zip(expected, dims, strict=True))


@FUZZ
@given(body=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_control_bodies_decode_or_are_refused(body: bytes) -> None:
    for schema in (http_codec.RepositoryIndexBody, http_codec.ModelControlBody):
        with contextlib.suppress(InvalidInputError):
            http_codec.decode_body(body, schema, "control request")
