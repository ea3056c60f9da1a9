"""Hostile and malformed requests: each is refused with its 4xx and a JSON error, and the replica
serves a good request correctly right after. One table, one case per row.

Runs through Starlette's TestClient over the torch runtime; the codec is shared by both
runtimes, so these statuses hold for the Triton runtime as well.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from tests.conftest import ServeFactory, reference

SMALL_LIMIT = 64 * 2**10  # the "small" server's max_request_bytes
GOOD_X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
GOOD = {
    "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [2, 16], "data": GOOD_X.ravel().tolist()}]
}


@dataclass(frozen=True)
class Case:
    """One request and what the server must answer to it."""

    status: int
    phrase: str  # part of the error message
    body: bytes | Iterator[bytes] = b""
    path: str = "/v2/models/linear/infer"
    method: str = "POST"
    headers: dict[str, str | bytes] = field(default_factory=dict)
    server: str = "default"  # default (8 MiB, model control off) | control (model control on) | small


def infer(body: object, status: int, phrase: str, **kwargs: object) -> Case:
    """A case posting `body` (a dict/list is JSON-encoded) to an infer route."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Case(status, phrase, raw, **kwargs)  # type: ignore[arg-type]


def tensor(**fields: object) -> dict:
    """The good linear request with fields of its one input replaced."""
    return {"inputs": [{**GOOD["inputs"][0], **fields}]}


def with_parameters(request: object = None, output: object = None, input_: object = None) -> dict:
    body: dict = tensor(parameters=input_)
    body["parameters"] = request
    body["outputs"] = [{"name": "output__0", "parameters": output}]
    return body


def binary(declared: object, actual: int, phrase: str) -> Case:
    """A binary-extension request declaring `declared` bytes for linear's input and carrying `actual`."""
    header = orjson.dumps(tensor(data=None, parameters={"binary_data_size": declared}))
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return Case(400, phrase, header + bytes(actual), headers=headers)


def bytes_tensor(serialized: bytes, phrase: str) -> Case:
    """A binary-extension BYTES input for linear carrying `serialized` (length-prefixed elements)."""
    header = orjson.dumps(
        tensor(datatype="BYTES", data=None, parameters={"binary_data_size": len(serialized)})
    )
    headers = {"Inference-Header-Content-Length": str(len(header))}
    return Case(400, phrase, header + serialized, headers=headers)


def header_length(value: str | bytes, phrase: str = "Inference-Header-Content-Length") -> Case:
    return Case(400, phrase, orjson.dumps(GOOD), headers={"Inference-Header-Content-Length": value})


def compressed(body: bytes, encoding: str, status: int, phrase: str) -> Case:
    return Case(status, phrase, body, headers={"Content-Encoding": encoding})


def json_with(literal: bytes) -> bytes:
    """The good request with its first value replaced by a raw JSON literal (NaN, 1e400, ...)."""
    return orjson.dumps(GOOD).replace(b'"data":[-1.0', b'"data":[' + literal, 1)


def control(path: str, body: bytes, status: int, phrase: str, server: str = "default") -> Case:
    return Case(status, phrase, body, path=f"/v2/repository{path}", server=server)


def length(value: str) -> dict[str, str]:
    """A Content-Length that disagrees with the body (uvicorn would refuse it; TestClient sends it)."""
    return {"Content-Length": value}


def chunks(total: int) -> Iterator[bytes]:
    """A body without Content-Length (chunked), `total` bytes of spaces."""
    for _ in range(total // 4096):
        yield b" " * 4096


NINE_MIB_OF_ZEROS = gzip.compress(b"\x00" * (9 * 2**20))
SCALE = {"name": "scale", "datatype": "FP32", "shape": [1, 1], "data": [2.0]}
SMALL_TENSOR = {"name": "x", "datatype": "FP32", "shape": [1, 9000], "data": [0] * 9000}  # 36 kB of FP32

CASES: dict[str, Case] = {
    # --- not JSON, or not the JSON of a request ----------------------------------------------
    "json-truncated": infer(b'{"inputs": [', 400, "malformed JSON"),
    "json-empty-body": infer(b"", 400, "malformed JSON"),
    "json-array": infer(b"[]", 400, "the body must be a JSON object"),
    "json-string": infer(b'"inputs"', 400, "the body must be a JSON object"),
    "json-NaN": infer(json_with(b"NaN"), 400, "malformed JSON"),
    "json-Infinity": infer(json_with(b"Infinity"), 400, "malformed JSON"),
    "json-minus-Infinity": infer(json_with(b"-Infinity"), 400, "malformed JSON"),
    "json-1e400": infer(json_with(b"1e400"), 400, "malformed JSON"),
    "json-invalid-utf8": infer(b'{"id": "\xff", "inputs": []}', 400, "malformed JSON"),
    "json-trailing-garbage": infer(orjson.dumps(GOOD) + b"}", 400, "malformed JSON"),
    "json-nested-2000-deep": infer(json_with(b"[" * 2000), 400, "malformed JSON"),
    # --- wrong types ----------------------------------------------------------------------------
    "inputs-missing": infer({}, 400, "inputs: Field required"),
    "inputs-object": infer({"inputs": {}}, 400, "inputs: Input should be a valid list"),
    "input-number": infer({"inputs": [5]}, 400, "inputs.0: Input should be a valid dictionary"),
    "name-number": infer(tensor(name=5), 400, "inputs.0.name: Input should be a valid string"),
    "datatype-number": infer(tensor(datatype=32), 400, "inputs.0.datatype"),
    "datatype-unknown": infer(tensor(datatype="FP33"), 400, "unsupported datatype 'FP33'"),
    "datatype-BF16": infer(tensor(datatype="BF16"), 400, "unsupported datatype 'BF16'"),
    "datatype-BYTES-for-FP32": infer(
        tensor(datatype="BYTES", data=["x"] * 32),
        400,
        "data-type is 'BYTES', but model 'linear' expects 'FP32'",
    ),
    "datatype-wrong": infer(tensor(datatype="FP64"), 400, "expects 'FP32'"),
    "id-number": infer({**GOOD, "id": 5}, 400, "id: Input should be a valid string"),
    "parameters-list": infer({**GOOD, "parameters": [1]}, 400, "parameters: Input should be a valid dict"),
    "outputs-string": infer({**GOOD, "outputs": "output__0"}, 400, "outputs: Input should be a valid list"),
    "output-without-name": infer({**GOOD, "outputs": [{}]}, 400, "outputs.0.name: Field required"),
    "data-string": infer(tensor(data="0.5"), 400, "not FP32"),
    "data-strings": infer(tensor(data=["0.5"] * 32), 400, "not FP32"),
    "data-booleans": infer(tensor(data=[True] * 32), 400, "not FP32"),
    "data-object": infer(tensor(data={"a": 1}), 400, "not FP32"),
    "data-nulls": infer(tensor(data=[None] * 32), 400, "not FP32"),
    "data-ragged": infer(tensor(data=[[0.5] * 16, [0.5] * 15]), 400, "data is not FP32"),
    "data-too-few": infer(
        tensor(data=[0.5] * 31),
        400,
        "Unable to parse 'data': Shape does not match true shape of 'data' field",
    ),
    "data-too-many": infer(
        tensor(data=[0.5] * 33),
        400,
        "Unable to parse 'data': Shape does not match true shape of 'data' field",
    ),
    "data-out-of-range": infer(
        {"inputs": [{"name": "INPUT__0", "datatype": "INT32", "shape": [2, 3], "data": [2**40] * 6}]},
        400,
        "outside the range of INT32",
        path="/v2/models/int_ops/infer",
    ),
    "data-float-for-INT32": infer(
        {"inputs": [{"name": "INPUT__0", "datatype": "INT32", "shape": [2, 3], "data": [1.5] * 6}]},
        400,
        "not INT32",
        path="/v2/models/int_ops/infer",
    ),
    # --- shapes ---------------------------------------------------------------------------------
    "shape-floats": infer(tensor(shape=[2.0, 16]), 400, "inputs.0.shape.0: Input should be a valid integer"),
    "shape-strings": infer(tensor(shape=["2", "16"]), 400, "inputs.0.shape.0"),
    "shape-boolean": infer(tensor(shape=[True, 16]), 400, "inputs.0.shape.0"),
    "shape-null": infer(tensor(shape=[None, 16]), 400, "inputs.0.shape.0"),
    "shape-string": infer(tensor(shape="2,16"), 400, "inputs.0.shape: Input should be a valid list"),
    "shape-negative": infer(tensor(shape=[-2, 16]), 400, "negative dimension"),
    "shape-33-dims": infer(tensor(shape=[1] * 33, data=[0.5]), 400, "33 dimensions; at most 32"),
    "shape-40-dims": infer(tensor(shape=[1] * 40, data=[0.5]), 400, "40 dimensions; at most 32"),
    "shape-2**40-elements": infer(tensor(shape=[2**40, 16]), 413, "would exceed the request's"),
    "shape-2**64-elements": infer(tensor(shape=[2**32, 2**32]), 413, "would exceed"),
    "shape-empty-but-huge": infer(tensor(shape=[0, 2**63], data=[]), 413, "would exceed"),
    "shape-not-the-models": infer(
        tensor(shape=[2, 15], data=[0.5] * 30), 400, "Expected [-1,16], got [2,15]"
    ),
    "batch-over-max": infer(
        {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [9, 3, 1, 1], "data": [0.0] * 27}]},
        400,
        "inference request batch-size must be <= 8 for 'image_classifier'",
        path="/v2/models/image_classifier/infer",
    ),
    "batch-zero": infer(tensor(shape=[0, 16], data=[]), 400, "batch-size 0"),
    # --- binary tensor extension ----------------------------------------------------------------
    "binary-size-mismatch": binary(
        100, 128, "input byte size mismatch for input 'input__0' for model 'linear'. Expected 128, got 100"
    ),
    "binary-size-string": binary("128", 128, "Unable to parse 'binary_data_size'"),
    "binary-size-boolean": binary(True, 128, "Unable to parse 'binary_data_size'"),
    "binary-size-negative": binary(-128, 128, "Unable to parse 'binary_data_size'"),
    "binary-size-float": binary(128.0, 128, "Unable to parse 'binary_data_size'"),
    "binary-data-short": binary(
        128, 64, "unexpected size for input 'input__0', expecting 64 additional bytes for model 'linear'"
    ),
    "binary-data-trailing": binary(128, 130, "unexpected additional input data for model 'linear'"),
    # --- BYTES: Triton's 4-byte little-endian length before each element -----------------------
    "bytes-json-numbers": infer(tensor(datatype="BYTES"), 400, "holds values that are not BYTES"),
    "bytes-json-nulls": infer(tensor(datatype="BYTES", data=[None] * 32), 400, "not BYTES"),
    "bytes-prefix-past-the-end": bytes_tensor(b"\x10\x00\x00\x00abc", "expecting string of length 16"),
    "bytes-prefix-cut": bytes_tensor(b"\x01\x00\x00\x00a\x01\x00", "incomplete string length indicator"),
    "bytes-prefix-4GiB": bytes_tensor(b"\xff\xff\xff\xff" + bytes(12), "string of length 4294967295"),
    "bytes-elements-over-limit": infer(
        tensor(datatype="BYTES", shape=[2, 2**20], data=["x"]),
        413,
        "input 'input__0' of shape [2, 1048576] (BYTES) would exceed the request's 65536-byte limit",
        server="small",
    ),
    "bytes-raw-body-for-FP32": infer(
        b"\x01\x00\x00\x00a",
        400,
        "input byte size mismatch",
        headers={"Inference-Header-Content-Length": "0"},
    ),
    "binary-without-header-length": infer(
        orjson.dumps(tensor(data=None, parameters={"binary_data_size": 128})) + bytes(128),
        400,
        "malformed JSON",
    ),
    # --- Inference-Header-Content-Length --------------------------------------------------------
    "header-length-text": header_length("x", "'x' is not an integer"),
    "header-length-negative": header_length("-1", "'-1' is not an integer"),
    "header-length-float": header_length("10.5", "is not an integer"),
    "header-length-spaces": header_length(" 10", "is not an integer"),
    "header-length-arabic-digits": header_length("\u0661\u0662".encode(), "is not an integer"),
    "header-length-past-body": header_length("99999999", "outside the body"),
    "header-length-cuts-json": header_length("10", "malformed JSON"),
    # --- compression ----------------------------------------------------------------------------
    "gzip-bomb": compressed(NINE_MIB_OF_ZEROS, "gzip", 413, "decompressed request body exceeds"),
    "gzip-garbage": compressed(b"not gzip", "gzip", 400, "cannot decompress gzip"),
    "gzip-of-bad-json": compressed(gzip.compress(b'{"inputs": ['), "gzip", 400, "malformed JSON"),
    "deflate-truncated": compressed(zlib.compress(orjson.dumps(GOOD))[:-8], "deflate", 400, "truncated"),
    "deflate-garbage": compressed(b"\x78\x9c garbage", "deflate", 400, "cannot decompress deflate"),
    "encoding-unknown": compressed(orjson.dumps(GOOD), "br", 400, "unsupported Content-Encoding 'br'"),
    # --- routes, methods, names -----------------------------------------------------------------
    "model-unknown": infer(
        GOOD, 404, "Request for unknown model: 'nope' is not found", path="/v2/models/nope/infer"
    ),
    "version-unknown": infer(
        GOOD,
        404,
        "Request for unknown model: 'linear' version 2 is not found",
        path="/v2/models/linear/versions/2/infer",
    ),
    "version-text": infer(GOOD, 404, "Not Found", path="/v2/models/linear/versions/x/infer"),  # no such route
    "route-unknown": infer(GOOD, 404, "Not Found", path="/v2/models/linear/explain"),
    "route-v3": Case(404, "Not Found", path="/v3", method="GET"),
    "method-GET-infer": Case(405, "Method Not Allowed", method="GET"),
    "method-POST-live": Case(405, "Method Not Allowed", path="/v2/health/live"),
    "method-DELETE-model": Case(405, "Method Not Allowed", path="/v2/models/linear", method="DELETE"),
    "traversal-encoded-slashes": infer(GOOD, 404, "Not Found", path="/v2/models/..%2F..%2Fetc/infer"),
    "traversal-dot-dot-model": infer(
        GOOD, 404, "unknown model: '..' is not found", path="/v2/models/%2E%2E/infer"
    ),
    "traversal-load": control("/models/%2E%2E/load", b"", 400, "not a model directory name", "control"),
    "traversal-load-backslash": control(
        "/models/..%5Cetc/load", b"", 400, "not a model directory name", "control"
    ),
    # --- per-request bounds ---------------------------------------------------------------------
    "inputs-150k": infer(
        {"inputs": [{"name": "", "datatype": "", "shape": []}] * 150_000}, 400, "150000 inputs; at most 1024"
    ),
    "outputs-2000": infer({**GOOD, "outputs": [{"name": "o"}] * 2000}, 400, "2000 outputs; at most 1024"),
    "inputs-duplicate": infer(
        {"inputs": GOOD["inputs"] * 2}, 400, "input 'input__0' already exists in request"
    ),
    "outputs-duplicate": infer({**GOOD, "outputs": [{"name": "output__0"}] * 2}, 400, "more than once"),
    "tensor-bytes-over-limit": infer(
        {"inputs": [SMALL_TENSOR, {**SMALL_TENSOR, "name": "y"}, SCALE]},
        413,
        "input 'y' of shape [1, 9000] (FP32) would exceed the request's 65536-byte limit",
        path="/v2/models/multi_io/infer",
        server="small",
    ),
    "body-over-limit": infer(b" " * (SMALL_LIMIT + 1), 413, "exceeds the 65536-byte limit", server="small"),
    "body-over-limit-chunked": Case(413, "exceeds the 65536-byte limit", chunks(2**17), server="small"),
    "content-length-short": infer(GOOD, 400, "longer than its Content-Length", headers=length("10")),
    "content-length-long": infer(GOOD, 400, "of its Content-Length of 99999 bytes", headers=length("99999")),
    "content-length-text": infer(GOOD, 400, "Content-Length 'ten'", headers=length("ten")),
    # --- extensions and parameters --------------------------------------------------------------
    "shm-region-input": infer(
        with_parameters(input_={"shared_memory_region": "r0", "shared_memory_byte_size": 128}),
        400,
        "input 'input__0': parameter 'shared_memory_region' is Triton's shared-memory extension",
    ),
    "shm-offset-input": infer(with_parameters(input_={"shared_memory_offset": 0}), 400, "shared-memory"),
    "shm-region-output": infer(
        with_parameters(output={"shared_memory_region": "r0"}), 400, "output 'output__0': parameter"
    ),
    "shm-byte-size-output": infer(
        with_parameters(output={"shared_memory_byte_size": 16}), 400, "shared-memory extension"
    ),
    "classification": infer(
        with_parameters(output={"classification": 3}), 400, "Triton's classification extension"
    ),
    "binary_data_output-object": infer(
        with_parameters(request={"binary_data_output": {"x": 1}}), 400, "must be a boolean, not dict"
    ),
    "binary_data_output-string": infer(
        with_parameters(request={"binary_data_output": "true"}), 400, "must be a boolean, not str"
    ),
    "binary_data-number": infer(with_parameters(output={"binary_data": 1}), 400, "must be a boolean"),
    "output-parameter-unknown": infer(with_parameters(output={"top_k": 1}), 400, "unsupported parameters"),
    "input-parameters-list": infer(with_parameters(input_=[1]), 400, "inputs.0.parameters"),
    "priority-string": infer(with_parameters(request={"priority": "1"}), 400, "'priority' must be integer"),
    "timeout-negative": infer(with_parameters(request={"timeout": -1}), 400, "between 0 and 2**64 - 1"),
    "sequence_start-number": infer(with_parameters(request={"sequence_start": 1}), 400, "must be boolean"),
    "parameter-object": infer(with_parameters(request={"custom": {"a": 1}}), 400, "not dict"),
    # --- repository: index, load, unload (model control off, then on) -------------------------
    "index-ready-string": control("/index", b'{"ready": "yes"}', 400, "ready: Input should be a valid bool"),
    "index-ready-number": control("/index", b'{"ready": 1}', 400, "valid boolean"),
    "index-array": control("/index", b"[]", 400, "the body must be a JSON object"),
    "index-malformed": control("/index", b"{", 400, "malformed JSON"),
    "index-over-limit": control("/index", b" " * (SMALL_LIMIT + 1), 413, "65536-byte limit", "small"),
    "load-off": control("/models/linear/load", b"", 503, "explicit model load / unload is not allowed"),
    "load-off-parameters-number": control(
        "/models/linear/load", b'{"parameters": 5}', 400, "parameters: Input should be a valid dictionary"
    ),
    "unload-off": control("/models/linear/unload", b"{}", 503, "args.model_control: true"),
    "unload-off-parameters-string": control("/models/linear/unload", b'{"parameters": "x"}', 400, "dict"),
    "load-parameters-number": control(
        "/models/linear/load", b'{"parameters": 5}', 400, "valid dictionary", "control"
    ),
    "load-parameters-list": control(
        "/models/linear/load", b'{"parameters": []}', 400, "valid dictionary", "control"
    ),
    "load-config-malformed": control(
        "/models/linear/load", b'{"parameters": {"config": "{"}}', 400, "Invalid config override", "control"
    ),
    "load-config-number": control(
        "/models/linear/load", b'{"parameters": {"config": 5}}', 400, "must be a string", "control"
    ),
    "load-config-other-model": control(
        "/models/linear/load",
        b'{"parameters": {"config": "{\\"name\\": \\"x\\"}"}}',
        400,
        "names the model 'x'",
        "control",
    ),
    "load-file-override": control(
        "/models/linear/load",
        b'{"parameters": {"file:1/model.pt": "AA=="}}',
        400,
        "file overrides are not supported",
        "control",
    ),
    "load-parameter-unknown": control(
        "/models/linear/load",
        b'{"parameters": {"x": "y"}}',
        400,
        "Unrecognized load parameter 'x'",
        "control",
    ),
    "load-malformed": control("/models/linear/load", b'{"parameters": ', 400, "malformed JSON", "control"),
    "load-unknown-model": control(
        "/models/nope/load",
        b"",
        400,
        "failed to load 'nope', failed to poll from model repository",
        "control",
    ),
    "unload-parameters-number": control(
        "/models/linear/unload", b'{"parameters": 1}', 400, "valid dictionary", "control"
    ),
}


@pytest.fixture
def clients(serve: ServeFactory) -> dict[str, TestClient]:
    """The three servers the table names, started on first use."""
    settings = {
        "default": {},
        "control": {"model_control": True},
        "small": {"max_request_bytes": SMALL_LIMIT},
    }

    class Servers(dict):
        def __missing__(self, name: str) -> TestClient:
            self[name] = serve(**settings[name])[0]
            return self[name]

    return Servers()


@pytest.fixture(scope="module")
def expected(mixed_repository: Path) -> np.ndarray:
    return reference(mixed_repository, "linear", GOOD_X)[0]


def test_the_table_is_large() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_request_is_refused_and_the_next_is_served(
    clients: dict[str, TestClient], expected: np.ndarray, case_id: str
) -> None:
    case = CASES[case_id]
    client = clients[case.server]
    response = client.request(case.method, case.path, content=case.body, headers=case.headers)
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    assert case.phrase in body["error"], body["error"][:500]
    assert "Traceback" not in body["error"]

    good = client.post("/v2/models/linear/infer", json=GOOD)
    assert good.status_code == 200, good.text
    [output] = good.json()["outputs"]
    assert output["shape"] == [2, 4]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(2, 4), expected, atol=1e-6)
