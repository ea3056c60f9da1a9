"""The HTTP codec: JSON and binary-extension bodies both ways, compression, control bodies."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serve_app.datatypes import DATATYPE_BY_NUMPY
from serve_app.errors import InvalidInputError, PayloadTooLargeError
from serve_app.http_codec import (
    InferRequestBody,
    ModelControlBody,
    RepositoryIndexBody,
    decode_body,
    decompress,
    encode_response,
)
from serve_app.http_codec import _well_formed as well_formed
from serve_app.infer_types import InferResponse, RequestedOutput
from tests.unit.http_bodies import decode, json_input

# --- JSON requests -----------------------------------------------------------------------


def test_json_request_flat_and_nested_data() -> None:
    request = decode(
        {
            "id": "req-7",
            "parameters": {"priority": 2},
            "inputs": [
                json_input("flat", "FP32", [2, 2], [1, 2.5, 3, 4]),
                json_input("nested", "INT64", [2, 2], [[1, 2], [3, 4]]),
                json_input("flags", "BOOL", [3], [True, False, True]),
            ],
        }
    )
    assert request.model_name == "m" and request.model_version is None
    assert request.id == "req-7"
    assert request.parameters == {"priority": 2}
    assert request.outputs is None and request.binary_output is False
    flat, nested, flags = request.inputs
    assert flat.shape == (2, 2) and flat.datatype == "FP32"
    np.testing.assert_array_equal(flat.array, np.array([[1, 2.5], [3, 4]], np.float32))
    assert flat.array.dtype == np.float32
    np.testing.assert_array_equal(nested.array, np.array([[1, 2], [3, 4]], np.int64))
    assert nested.array.dtype == np.int64
    np.testing.assert_array_equal(flags.array, [True, False, True])


def test_requested_outputs_binary_flags() -> None:
    request = decode(
        {
            "inputs": [json_input("x", "FP32", [1], [1])],
            "parameters": {"binary_data_output": True, "custom": "kept"},
            "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
        }
    )
    assert request.binary_output is True
    assert request.parameters == {"custom": "kept"}  # binary_data_output is consumed
    # As in Triton: binary_data_output is the default of the outputs not named; a named output
    # is binary only with binary_data: true (qa/L0_http/test.sh's curl checks).
    assert request.outputs == [RequestedOutput("a", False), RequestedOutput("b", False)]
    request = decode(
        {
            "inputs": [json_input("x", "FP32", [1], [1])],
            "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": True}}],
        }
    )
    assert request.outputs == [RequestedOutput("a", False), RequestedOutput("b", True)]
    # An empty list asks for every output, as in Triton.
    assert decode({"inputs": [json_input("x", "FP32", [1], [1])], "outputs": []}).outputs is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[1, 2]", "invalid inference request"),
        (b'{"id": "x"}', "inputs: Field required"),
        (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}), "inputs.0.shape"),
        (orjson.dumps({"inputs": [json_input("x", "FP32", [-1], [1])]}), "negative dimension"),
        (
            orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}),
            "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            "'shared_memory_region' in 'parameters'. But no field is set",
        ),
        (
            orjson.dumps(
                {"inputs": [{**json_input("x", "FP32", [1], [1]), "parameters": {"binary_data_size": 4}}]}
            ),
            "But set 'data' 'binary_data_size'",
        ),
        (
            orjson.dumps({"inputs": [json_input("x", "FP32", [3], [1, 2])]}),
            "Unable to parse 'data': Shape does not match true shape of 'data' field",
        ),
        (orjson.dumps({"inputs": [json_input("x", "FP32", [3], [[1, 2], [3]])]}), "data is not FP32"),
        (orjson.dumps({"inputs": [json_input("x", "BF16", [1], [1])]}), "unsupported datatype 'BF16'"),
        (
            orjson.dumps({"inputs": [json_input("x", "BYTES", [2], ["a", 1])]}),
            "holds values that are not BYTES",
        ),
        (
            orjson.dumps({"inputs": [json_input("x", "FP32", [1], [1])], "outputs": [{"name": "a"}] * 2}),
            "requested more than once",
        ),
        (
            orjson.dumps(
                {
                    "inputs": [json_input("x", "FP32", [1], [1])],
                    "outputs": [{"name": "a", "parameters": {"classification": 3}}],
                }
            ),
            "parameter 'classification' is Triton's classification extension",
        ),
    ],
)
def test_malformed_requests_are_invalid_input(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        decode(body)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1, 2.5], "not INT32"),  # numpy would truncate to 2
        ("FP32", ["1.5", "2"], "not FP32"),  # numpy would parse the strings
        ("FP32", [True, False], "not FP32"),
        ("BOOL", [1, 0], "not BOOL"),
        ("INT64", [1, None], "not INT64"),
        ("UINT8", [1, 256], "outside the range of UINT8"),
        ("UINT32", [-1, 2], "outside the range of UINT32"),
        ("INT64", [2**63, 1], "outside the range of INT64"),  # numpy infers float64 for these
        ("FP64", [1.5, {"a": 1}], "not FP64"),
    ],
)
def test_json_values_of_the_wrong_kind_are_refused(datatype: str, data: list, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decode({"inputs": [json_input("x", datatype, [2], data)]})


def test_json_integers_are_valid_floats_and_extremes_are_kept() -> None:
    request = decode(
        {
            "inputs": [
                json_input("f", "FP64", [2], [1, 2]),
                json_input("max", "FP32", [2], [3.4028235e38, -65504.0]),
                json_input("u", "UINT64", [2], [2**64 - 1, 1]),
                json_input("i", "INT8", [2], [-128, 127]),
            ]
        }
    )
    f, largest, u, i = (t.array for t in request.inputs)
    np.testing.assert_array_equal(f, [1.0, 2.0])
    assert largest[0] == np.finfo(np.float32).max and largest.dtype == np.float32
    np.testing.assert_array_equal(u, np.array([2**64 - 1, 1], np.uint64))
    np.testing.assert_array_equal(i, np.array([-128, 127], np.int8))


# --- binary requests ---------------------------------------------------------------------


def test_tritonclient_binary_request_is_decoded_without_copy() -> None:
    image = np.random.default_rng(0).random((2, 3), dtype=np.float32)
    ids = np.array([[7, -8]], np.int64)
    x = httpclient.InferInput("image", list(image.shape), "FP32")
    x.set_data_from_numpy(image)  # binary
    y = httpclient.InferInput("ids", list(ids.shape), "INT64")
    y.set_data_from_numpy(ids, binary_data=False)  # JSON, mixed into a binary body
    z = httpclient.InferInput("mask", [3], "BOOL")
    z.set_data_from_numpy(np.array([True, False, True]))
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [x, y, z], outputs=[httpclient.InferRequestedOutput("out", binary_data=False)], request_id="r1"
    )
    assert json_size is not None and json_size < len(body)
    request = decode(body, json_size)
    assert request.id == "r1"
    assert request.outputs == [RequestedOutput("out", False)]
    decoded = {t.name: t.array for t in request.inputs}
    np.testing.assert_array_equal(decoded["image"], image)
    np.testing.assert_array_equal(decoded["ids"], ids)
    np.testing.assert_array_equal(decoded["mask"], [True, False, True])
    assert decoded["image"].dtype == np.float32 and decoded["image"].shape == (2, 3)
    assert not decoded["image"].flags.owndata  # a view of the body


def test_tritonclient_default_outputs_ask_for_binary() -> None:
    x = httpclient.InferInput("x", [1], "FP32")
    x.set_data_from_numpy(np.ones(1, np.float32), binary_data=False)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([x])
    assert json_size is None
    request = decode(body)
    assert request.binary_output is True and request.outputs is None and request.parameters == {}


def binary_body(array: np.ndarray, size: object = None, extra: bytes = b"") -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": DATATYPE_BY_NUMPY[array.dtype],
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes if size is None else size},
                }
            ]
        }
    )
    return header + array.tobytes() + extra, len(header)


@pytest.mark.parametrize(
    ("size", "extra", "header_delta", "message"),
    [
        (12, b"", 0, "input byte size mismatch for input 'x' for model 'm'. Expected 32, got 12"),
        ("32", b"", 0, "Unable to parse 'binary_data_size': input 'x' has '32', not an unsigned integer"),
        (True, b"", 0, "Unable to parse 'binary_data_size': input 'x' has True"),
        (-4, b"", 0, "Unable to parse 'binary_data_size': input 'x' has -4"),
        (None, b"\x00\x01", 0, "unexpected additional input data for model 'm': 2 bytes not claimed"),
        (None, b"", 1, "malformed JSON"),  # the header length reaches into the binary data
        (None, b"", -1, "malformed JSON"),  # it cuts the JSON short
    ],
)
def test_bad_binary_bodies_are_invalid_input(
    size: object, extra: bytes, header_delta: int, message: str
) -> None:
    body, header_length = binary_body(np.zeros((2, 4), np.float32), size, extra)
    with pytest.raises(InvalidInputError) as info:
        decode(body, header_length + header_delta)
    assert message in str(info.value)


def test_binary_data_running_past_the_body_is_invalid_input() -> None:
    body, header_length = binary_body(np.zeros((2, 4), np.float32))
    with pytest.raises(
        InvalidInputError, match=r"^unexpected size for input 'x', expecting 4 additional bytes for model 'm'"
    ):
        decode(body[:-4], header_length)
    with pytest.raises(InvalidInputError, match="must specify valid 'Infer-Header-Content-Length'"):
        decode(body[:header_length])  # binary_data_size without the header-length header


@pytest.mark.parametrize("value", ["abc", "-3", "100000", " 12", "1_0", "\u0661\u0662", "1.0", ""])
def test_bad_header_length_is_invalid_input(value: str) -> None:
    body, _ = binary_body(np.zeros(2, np.float32))
    with pytest.raises(InvalidInputError, match="Inference-Header-Content-Length"):
        decode(body, value)


def test_raw_binary_request_is_marked_with_its_body() -> None:
    body = np.arange(6, dtype=np.int32).tobytes()
    request = decode(body, 0)
    assert request.inputs == [] and request.outputs is None and request.binary_output is True
    assert request.raw_input is not None and request.raw_input.tobytes() == body
    assert decode({"inputs": []}).raw_input is None


# --- bounds and typed parameters --------------------------------------------------------


@pytest.mark.parametrize("shape", [[1.0, 5], ["1", "5"], [True, 5], [None], "15", [[1], 5]])
def test_shapes_are_strict_integers(shape: object) -> None:
    with pytest.raises(InvalidInputError, match=r"invalid inference request: inputs\.0\.shape"):
        decode({"inputs": [json_input("x", "FP32", shape, [1] * 5)]})  # type: ignore[arg-type]


# JSON values, and each field of a request either as the schema wants it or as any of them.
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=2)
)
_values = _leaves | st.lists(_leaves, max_size=2) | st.dictionaries(st.text(max_size=2), _leaves, max_size=2)


def _either(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly `valid`, so that whole requests often are."""
    return st.integers(0, 4).flatmap(lambda n: valid if n else _values)


_parameters = _either(st.none() | st.dictionaries(st.text(max_size=3), _leaves, max_size=2))
_tensor = st.fixed_dictionaries(
    {},
    optional={
        "name": _either(st.text(max_size=3)),
        "datatype": _either(st.just("FP32")),
        "shape": _either(st.lists(st.integers(-2, 2**65) | _leaves, max_size=3)),
        "parameters": _parameters,
        "data": _values,
        "extra": _values,
    },
)
_output = st.fixed_dictionaries(
    {}, optional={"name": _either(st.text(max_size=3)), "parameters": _parameters}
)
_documents = st.fixed_dictionaries(
    {"inputs": _either(st.lists(_either(_tensor), max_size=3))},
    optional={
        "outputs": _either(st.none() | st.lists(_either(_output), max_size=2)),
        "id": _either(st.none() | st.text(max_size=3)),
        "parameters": _parameters,
        "extra": _values,
    },
)


_GOOD_INPUT = {"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": None, "data": [1, 2]}
_GOOD_OUTPUT = {"name": "y", "parameters": {"binary_data": True}}


@settings(max_examples=1000, deadline=None, database=None)
@given(_documents | st.dictionaries(st.text(max_size=2), _values, max_size=2))
@example({"inputs": [_GOOD_INPUT], "outputs": [_GOOD_OUTPUT], "id": "q", "parameters": {"a": 1}, "more": 1})
@example({"inputs": []})
@example({"inputs": {}})
@example({"inputs": [5]})
@example({"inputs": [{**_GOOD_INPUT, "shape": [True, 2]}]})
@example({"inputs": [{**_GOOD_INPUT, "shape": [1.0, 2]}]})
@example({"inputs": [{**_GOOD_INPUT, "shape": "1,2"}]})
@example({"inputs": [{**_GOOD_INPUT, "name": 1}]})
@example({"inputs": [{**_GOOD_INPUT, "datatype": None}]})
@example({"inputs": [{**_GOOD_INPUT, "parameters": []}]})
@example({"inputs": [{"name": "x", "datatype": "FP32"}]})
@example({"inputs": [_GOOD_INPUT], "outputs": {}})
@example({"inputs": [_GOOD_INPUT], "outputs": [5]})
@example({"inputs": [_GOOD_INPUT], "outputs": [{"parameters": None}]})
@example({"inputs": [_GOOD_INPUT], "outputs": [{**_GOOD_OUTPUT, "parameters": [1]}]})
@example({"inputs": [_GOOD_INPUT], "id": 5})
@example({"inputs": [_GOOD_INPUT], "parameters": [1]})
def test_requests_skip_pydantic_exactly_when_it_would_take_them(document: dict) -> None:
    """The fast check is pydantic's schema for JSON values, neither looser nor stricter."""
    try:
        InferRequestBody.model_validate(document)
        accepted = True
    except ValidationError:
        accepted = False
    assert well_formed(document) is accepted


def test_validation_messages_name_the_first_problems_only() -> None:
    with pytest.raises(InvalidInputError) as info:
        decode({"inputs": [{"name": i} for i in range(100)]})
    message = str(info.value)
    assert message.startswith("invalid inference request: inputs.0.name: Input should be a valid string")
    assert message.count(";") == 5 and message.endswith("; and 295 more")  # 3 problems per input


# --- responses ---------------------------------------------------------------------------


def response(*outputs: tuple[str, bool, np.ndarray], **kwargs: object) -> InferResponse:
    return InferResponse(
        "m",
        "1",
        [(RequestedOutput(name, binary), array) for name, binary, array in outputs],
        **kwargs,  # type: ignore[arg-type]
    )


def test_json_response_matches_triton_and_tritonclient_parses_it() -> None:
    scores = np.array([[0.5, -1.25], [2.0, 3.0]], np.float32)
    flags = np.array([[True, False]])
    body, header_length = encode_response(
        response(("scores", False, scores), ("flags", False, flags), id="abc", parameters={"k": 1})
    )
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [0.5, -1.25, 2.0, 3.0]},
            {"name": "flags", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]},
        ],
        "id": "abc",
        "parameters": {"k": 1},
    }
    result = httpclient.InferenceServerClient.parse_response_body(body)
    np.testing.assert_array_equal(result.as_numpy("scores"), scores)
    np.testing.assert_array_equal(result.as_numpy("flags"), flags)


def test_id_is_omitted_when_the_request_had_none() -> None:
    body, _ = encode_response(response(("y", False, np.zeros(1, np.float32))))
    assert set(orjson.loads(body)) == {"model_name", "model_version", "outputs"}


def test_binary_response_round_trips_through_tritonclient() -> None:
    rng = np.random.default_rng(1)
    outputs = {
        "f16": rng.random((2, 3)).astype(np.float16),
        "u64": np.array([[1, 2**64 - 1]], np.uint64),
        "i8": np.array([-1, 5], np.int8),
        "mask": np.array([True, False, True]),
        "transposed": rng.random((3, 2)).astype(np.float64).T,  # not C-contiguous
        "empty": np.zeros((0, 4), np.float32),
    }
    body, header_length = encode_response(
        response(*((name, name != "i8", array) for name, array in outputs.items()), id="bin")
    )
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert header["id"] == "bin"
    sizes = {o["name"]: o.get("parameters", {}).get("binary_data_size") for o in header["outputs"]}
    assert sizes == {"f16": 12, "u64": 16, "i8": None, "mask": 3, "transposed": 48, "empty": 0}
    assert len(body) == header_length + sum(s for s in sizes.values() if s)
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    assert result.get_response()["id"] == "bin"
    for name, array in outputs.items():
        parsed = result.as_numpy(name)
        assert parsed.dtype == array.dtype
        np.testing.assert_array_equal(parsed, array)


# --- compression -------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_decompress_gzip_and_deflate(encoding: str, compress: object) -> None:
    body = orjson.dumps({"inputs": [json_input("x", "FP32", [1], [1])]}) * 3
    assert decompress(compress(body), encoding, limit=len(body)) == body  # type: ignore[operator]


def test_identity_and_absent_encoding_pass_through() -> None:
    assert decompress(b"raw", None, limit=10) == b"raw"
    assert decompress(b"raw", "identity", limit=10) == b"raw"


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"not gzip at all", "gzip", "cannot decompress gzip"),
        (b"not zlib either", "deflate", "cannot decompress deflate"),
        (gzip.compress(b"x" * 100)[:-6], "gzip", "truncated"),
        (b"data", "br", "unsupported Content-Encoding 'br'"),
    ],
)
def test_bad_compressed_bodies_are_invalid_input(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        decompress(body, encoding, limit=1000)


def test_decompressed_size_is_held_to_the_limit() -> None:
    bomb = gzip.compress(b"\x00" * 1_000_000)
    assert len(bomb) < 2000
    with pytest.raises(PayloadTooLargeError, match="exceeds the 100000-byte limit"):
        decompress(bomb, "gzip", limit=100_000)
    assert len(decompress(bomb, "gzip", limit=1_000_000)) == 1_000_000


def test_decompress_takes_any_buffer_and_keeps_uncompressed_ones() -> None:
    body = bytearray(b"payload")
    assert decompress(body, None, limit=10) is body
    assert decompress(memoryview(zlib.compress(b"payload")), "deflate", limit=10) == b"payload"


# --- repository control bodies -----------------------------------------------------------


def test_control_bodies_take_defaults_when_empty() -> None:
    assert decode_body(b"", RepositoryIndexBody, "index").ready is False
    assert decode_body(memoryview(b" \n"), ModelControlBody, "load").parameters is None
    assert decode_body(b'{"ready": true}', RepositoryIndexBody, "index").ready is True
    assert decode_body(b'{"parameters": {"config": "{}"}}', ModelControlBody, "load").parameters == {
        "config": "{}"
    }


@pytest.mark.parametrize(
    ("body", "schema", "message"),
    [
        (b'{"ready": "yes"}', RepositoryIndexBody, "invalid index: ready: Input should be a valid boolean"),
        (b'{"ready": 1}', RepositoryIndexBody, "ready: Input should be a valid boolean"),
        (b'{"parameters": 5}', ModelControlBody, "parameters: Input should be a valid dictionary"),
        (b'{"parameters": [1]}', ModelControlBody, "parameters: Input should be a valid dictionary"),
        (b"[]", ModelControlBody, "invalid index: the body must be a JSON object"),
        (b"{", RepositoryIndexBody, "malformed JSON"),
        (b'{"ready": NaN}', RepositoryIndexBody, "malformed JSON"),
    ],
)
def test_control_bodies_of_the_wrong_type_are_invalid_input(body: bytes, schema: type, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        decode_body(body, schema, "index")
    assert message in str(info.value)
