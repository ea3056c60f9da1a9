"""qa/L0_http (r24.10): http_test.py's HttpTest, test.sh's curl checks of binary and JSON outputs
and its base-path check, and the Python HTTP client examples test.sh runs.

QA's `onnx_zero_*` models are the libtorch identities here (`INPUT__0`, so the expected texts
name that input); `onnx_zero_1_float32_queue` is `libtorch_zero_1_float32_queue`.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.e2e.qa import examples
from tests.e2e.qa.targets import Endpoint, Target, by_design, unavailable, unavailable_on_torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RAW_HEADERS = {"Inference-Header-Content-Length": "0"}


def _infer_url(server: Endpoint, model: str) -> str:
    return f"{server.base_url}/v2/models/{model}/infer"


def _raw_binary(
    server: Endpoint, model: str, body: bytes, expected: bytes, extra_headers: dict | None = None
) -> None:
    """HttpTest._raw_binary_helper: a raw binary request (no JSON header); the identity model's
    output, after the response's JSON header, is the input's bytes."""
    response = requests.post(
        _infer_url(server, model), data=body, headers={**RAW_HEADERS, **(extra_headers or {})}
    )
    response.raise_for_status()
    header_size = int(response.headers["Inference-Header-Content-Length"])
    assert response.content[header_size:] == expected


def test_raw_binary(server: Endpoint) -> None:
    """http_test.py HttpTest.test_raw_binary."""
    data = np.arange(8, dtype=np.float32).tobytes()
    _raw_binary(server, "libtorch_zero_1_float32", data, data)


def test_raw_binary_longer(server: Endpoint) -> None:
    """http_test.py HttpTest.test_raw_binary_longer."""
    data = np.arange(32, dtype=np.float32).tobytes()
    _raw_binary(server, "libtorch_zero_1_float32", data, data)


def test_byte(server: Endpoint) -> None:
    """http_test.py HttpTest.test_byte: a raw BYTES input of one element; the output comes back
    with its 4-byte length prefix."""
    response = requests.post(
        _infer_url(server, "libtorch_nobatch_zero_1_object_1_element"), data="427", headers=RAW_HEADERS
    )
    response.raise_for_status()
    header_size = int(response.headers["Inference-Header-Content-Length"])
    assert response.content[header_size + 4 :].decode() == "427"


def _raw_refused(server: Endpoint, model: str, body: bytes, message: str) -> None:
    response = requests.post(_infer_url(server, model), data=body, headers=RAW_HEADERS)
    assert response.status_code == 400, response.text
    assert message in response.content.decode()


def test_byte_too_many_elements(server: Endpoint) -> None:
    """http_test.py HttpTest.test_byte_too_many_elements: raw BYTES needs input shape [1]."""
    _raw_refused(
        server,
        "libtorch_nobatch_zero_1_object",
        b"427",
        "For BYTE datatype raw input 'INPUT__0', the model must have input shape [1]",
    )


def test_multi_variable_dimensions(server: Endpoint) -> None:
    """http_test.py HttpTest.test_multi_variable_dimensions."""
    _raw_refused(
        server,
        "libtorch_zero_1_float16",
        np.ones([2, 2], dtype=np.float16).tobytes(),
        "The shape of the raw input 'INPUT__0' can not be deduced because there are more than one "
        "variable-sized dimension",
    )


def test_multi_inputs(server: Endpoint) -> None:
    """http_test.py HttpTest.test_multi_inputs: a raw request for a model of three inputs."""
    _raw_refused(
        server,
        "libtorch_zero_3_float32",
        np.arange(24, dtype=np.float32).tobytes(),
        "Raw request must only have 1 input (found 1) to be deduced but got 3 inputs in",
    )


def test_content_encoding_chunked_manually(server: Endpoint) -> None:
    """http_test.py HttpTest.test_content_encoding_chunked_manually: a body the caller encoded
    in one chunk itself, with `Transfer-Encoding: chunked`."""
    data = np.arange(8, dtype=np.float32).tobytes()
    chunked = f"{len(data):X}\r\n".encode() + data + b"\r\n" + b"0\r\n\r\n"
    _raw_binary(server, "libtorch_zero_1_float32", chunked, data, {"Transfer-Encoding": "chunked"})


@pytest.mark.parametrize("encoding", ["chunked", "compress", "deflate", "gzip"])
def test_content_encoding_unsupported_client(server: Endpoint, encoding: str) -> None:
    """http_test.py HttpTest.test_content_encoding_unsupported_client (its subTests): the Python
    client refuses a Transfer-Encoding header itself."""
    data = np.arange(8, dtype=np.float32).reshape(1, -1)
    tensor = httpclient.InferInput("INPUT__0", list(data.shape), np_to_triton_dtype(data.dtype))
    tensor.set_data_from_numpy(data)
    with (
        server.http_client() as client,
        pytest.raises(InferenceServerException, match="Unsupported HTTP header"),
    ):
        client.infer(
            model_name="libtorch_zero_1_float32", inputs=[tensor], headers={"Transfer-Encoding": encoding}
        )


def test_descriptive_status_code(target: Target) -> None:
    """http_test.py HttpTest.test_descriptive_status_code: a model that queues at most one request
    (and waits up to 1 s for a batch of 8) answers a second one 503. The first must succeed
    (QA's thread swallows its outcome; checked here so a model that is not ready cannot pass).
    runtime: torch has no queue policies: the model is UNAVAILABLE there, by design."""
    server = target.main
    model = "libtorch_zero_1_float32_queue"
    data = np.arange(8, dtype=np.float32).tobytes()
    if by_design(target, model):
        response = requests.post(_infer_url(server, model), data=data, headers=RAW_HEADERS)
        assert response.status_code == 503 and unavailable(model) in response.json()["error"], response.text
        return
    outcome: list[Exception | None] = []

    def first() -> None:
        try:
            _raw_binary(server, model, data, data)
            outcome.append(None)
        except (requests.RequestException, AssertionError) as exc:  # reported below, in the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.5)
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        _raw_binary(server, model, data, data)
    thread.join()
    assert raised.value.response.status_code == 503, raised.value.response.text
    assert outcome == [None], outcome


# --- test.sh: "Test combinations of binary and JSON data" (curl -d, `simple`) ------------------

ONES_TO_16 = list(range(1, 17))
INPUTS = [
    {"name": name, "datatype": "INT32", "shape": [1, 16], "data": ONES_TO_16} for name in ("INPUT0", "INPUT1")
]
SUM = b"[2,4,6,8,10,12,14,16,18,20,22,24,26,28,30,32]"
DIFFERENCE = b"[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]"
# What curl -d sends.
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _curl(server: Endpoint, body: dict) -> requests.Response:
    import json

    return requests.post(
        _infer_url(server, "simple"), data=json.dumps(body, separators=(",", ":")), headers=FORM
    )


CURL_CASES = {
    "no parameters, no outputs == json output": ({"inputs": INPUTS}, True, True),
    "binary_data=true on OUTPUT0, binary_data=false on OUTPUT1": (
        {
            "inputs": INPUTS,
            "outputs": [
                {"name": "OUTPUT0", "parameters": {"binary_data": True}},
                {"name": "OUTPUT1", "parameters": {"binary_data": False}},
            ],
        },
        False,
        True,
    ),
    "binary_data=true on OUTPUT0, binary_data not given on OUTPUT1": (
        {
            "inputs": INPUTS,
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}],
        },
        False,
        True,
    ),
    "binary_data_output=true, no outputs requested": (
        {"parameters": {"binary_data_output": True}, "inputs": INPUTS},
        False,
        False,
    ),
    "binary_data_output=true, binary_data=false on OUTPUT0, binary_data not given on OUTPUT1": (
        {
            "parameters": {"binary_data_output": True},
            "inputs": INPUTS,
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}, {"name": "OUTPUT1"}],
        },
        True,
        True,
    ),
}


@pytest.mark.parametrize("case", list(CURL_CASES))
def test_binary_json_combinations(server: Endpoint, case: str) -> None:
    """test.sh's curl checks: 200, and each output's values appear as JSON text exactly when
    Triton returns that output as JSON (`grep -c` of the body: 1 or 0)."""
    body, sum_as_json, difference_as_json = CURL_CASES[case]
    response = _curl(server, body)
    assert response.status_code == 200, response.text
    assert (SUM in response.content) == sum_as_json, response.content[:600]
    assert (DIFFERENCE in response.content) == difference_as_json, response.content[:600]


@pytest.mark.parametrize("count", [15, 18])
def test_data_shape_mismatch(server: Endpoint, count: int) -> None:
    """test.sh: 'data' that does not match 'shape' (15 and 18 elements for [1, 16]) is refused
    with Triton's exact error body, and the server still answers the first check after both."""
    bad = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(1, count + 1))}
        ]
    }
    response = _curl(server, bad)
    assert response.status_code != 200
    assert (
        b"""{"error":"Unable to parse 'data': Shape does not match true shape of 'data' field"}"""
        in response.content
    )
    response = _curl(server, {"inputs": INPUTS})
    assert response.status_code == 200, response.text
    assert SUM in response.content and DIFFERENCE in response.content


def test_base_path_url(server: Endpoint, capsys: pytest.CaptureFixture[str]) -> None:
    """test.sh "Test with the base path in url": simple_http_infer_client.py -u <server>/base_path
    fails (no such route), and its verbose log shows the path it posted to."""
    with pytest.raises(InferenceServerException):
        examples.http_infer_client(Endpoint(f"{server.http}/base_path", server.grpc))
    assert "POST /base_path/v2/models/simple/infer" in capsys.readouterr().out


def test_simple_http_health_metadata(server: Endpoint) -> None:
    """test.sh: simple_http_health_metadata.py -v."""
    examples.http_health_metadata(server)


def test_simple_http_aio_infer_client(server: Endpoint) -> None:
    """test.sh: simple_http_aio_infer_client.py -v."""
    examples.http_aio_infer_client(server)


def test_simple_http_infer_client(server: Endpoint) -> None:
    """test.sh: simple_http_infer_client.py -v."""
    examples.http_infer_client(server)


def test_simple_http_async_infer_client(server: Endpoint) -> None:
    """test.sh: simple_http_async_infer_client.py -v."""
    examples.http_async_infer_client(server)


def test_simple_http_string_infer_client(server: Endpoint) -> None:
    """test.sh: simple_http_string_infer_client.py -v (BYTES)."""
    examples.http_string_infer_client(server)


def test_simple_http_sequence_sync_infer_client(target: Target) -> None:
    """test.sh: simple_http_sequence_sync_infer_client.py -v (sequence batching; UNAVAILABLE on
    runtime: torch, by design)."""
    with unavailable_on_torch(target, "simple_sequence"):
        examples.http_sequence_sync_infer_client(target.main)
