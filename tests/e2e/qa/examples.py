"""Triton's client examples that qa/L0_http, qa/L0_grpc and qa/L0_data_compression run, ported
from triton-inference-server/client r24.10 `src/python/examples/` into functions on an `Endpoint`.

Each function keeps its example's checks (an example that would `sys.exit(1)` raises an
AssertionError here, one that prints its `PASS` line returns) and sends what the example sends,
with QA's command line (`-v`, the default URL: here the endpoint's).
"""

from __future__ import annotations

import asyncio
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient import utils
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.e2e.qa.targets import Endpoint

UNKNOWN_MODEL = "Request for unknown model"


def _add_sub_data(second: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The examples' `simple` inputs: 0..15 and all `second` (shape [1, 16], INT32)."""
    return np.arange(16, dtype=np.int32)[None], np.full((1, 16), second, dtype=np.int32)


def _check_add_sub(result: Any, input0: np.ndarray, input1: np.ndarray) -> None:
    output0, output1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    for i in range(16):
        assert input0[0][i] + input1[0][i] == output0[0][i], "sync infer error: incorrect sum"
        assert input0[0][i] - input1[0][i] == output1[0][i], "sync infer error: incorrect difference"


# --- HTTP ---------------------------------------------------------------------------------------


def _http_inputs(module: Any, input0: np.ndarray, input1: np.ndarray) -> list[Any]:
    """INPUT0 as JSON, INPUT1 binary (simple_http_infer_client.py / _aio_: `test_infer`)."""
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(input0, binary_data=False)
    inputs[1].set_data_from_numpy(input1, binary_data=True)
    return inputs


def _http_outputs(module: Any) -> list[Any]:
    """OUTPUT0 binary, OUTPUT1 as JSON."""
    return [
        module.InferRequestedOutput("OUTPUT0", binary_data=True),
        module.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]


QUERY_PARAMS = {"test_1": 1, "test_2": 2}


def http_infer_client(
    endpoint: Endpoint,
    headers: dict[str, str] | None = None,
    request_compression: str | None = None,
    response_compression: str | None = None,
) -> None:
    """simple_http_infer_client.py: with and without requested outputs, statistics of one model,
    and a wrong model name answered with Triton's unknown-model text."""
    client = endpoint.http_client(verbose=True)
    input0, input1 = _add_sub_data(second=-1)
    compression = {
        "request_compression_algorithm": request_compression,
        "response_compression_algorithm": response_compression,
    }
    for outputs in (_http_outputs(httpclient), None):
        results = client.infer(
            "simple",
            _http_inputs(httpclient, input0, input1),
            outputs=outputs,
            query_params=QUERY_PARAMS,
            headers=headers,
            **compression,
        )
        if outputs is not None:
            statistics = client.get_inference_statistics(model_name="simple", headers=headers)
            assert len(statistics["model_stats"]) == 1, "FAILED: Inference Statistics"
        _check_add_sub(results, input0, input1)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(
            "wrong_model_name",
            _http_inputs(httpclient, input0, input1),
            outputs=_http_outputs(httpclient),
            query_params=QUERY_PARAMS,
        )
    message = raised.value.message()
    assert message.startswith(UNKNOWN_MODEL), f"improper error message for wrong model name: {message!r}"
    client.close()


async def _http_aio_infer_client(
    endpoint: Endpoint, request_compression: str | None, response_compression: str | None
) -> None:
    import tritonclient.http.aio as aio

    client = endpoint.http_aio_client(verbose=True)
    input0, input1 = _add_sub_data(second=-1)
    compression = {
        "request_compression_algorithm": request_compression,
        "response_compression_algorithm": response_compression,
    }

    async def infer(model: str, outputs: bool, **options: Any) -> Any:
        return await client.infer(
            model,
            _http_inputs(aio, input0, input1),
            outputs=_http_outputs(aio) if outputs else None,
            query_params=QUERY_PARAMS,
            **options,
        )

    try:
        _check_add_sub(await infer("simple", True, **compression), input0, input1)
        statistics = await client.get_inference_statistics(model_name="simple")
        assert len(statistics["model_stats"]) == 1, "FAILED: Inference Statistics"
        _check_add_sub(await infer("simple", False, **compression), input0, input1)
        with pytest.raises(InferenceServerException) as raised:
            await infer("wrong_model_name", True)
        message = raised.value.message()
        assert message.startswith(UNKNOWN_MODEL), f"improper error message for wrong model name: {message!r}"
        # Infer in parallel.
        for result in await asyncio.gather(
            infer("simple", True, **compression), infer("simple", False, **compression)
        ):
            _check_add_sub(result, input0, input1)
    finally:
        await client.close()


def http_aio_infer_client(
    endpoint: Endpoint, request_compression: str | None = None, response_compression: str | None = None
) -> None:
    """simple_http_aio_infer_client.py: simple_http_infer_client.py's checks on the asyncio client,
    then two requests in parallel."""
    asyncio.run(_http_aio_infer_client(endpoint, request_compression, response_compression))


def http_health_metadata(endpoint: Endpoint) -> None:
    """simple_http_health_metadata.py."""
    client = endpoint.http_client(verbose=True)
    assert client.is_server_live(query_params=QUERY_PARAMS), "FAILED : is_server_live"
    assert client.is_server_ready(), "FAILED : is_server_ready"
    assert client.is_model_ready("simple"), "FAILED : is_model_ready"
    name = client.get_server_metadata()["name"]
    assert name == "triton", f"FAILED : get_server_metadata: name {name!r}"
    assert client.get_model_metadata("simple", query_params=QUERY_PARAMS)["name"] == "simple"
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("wrong_model_name")
    message = raised.value.message()
    assert UNKNOWN_MODEL in message, f"FAILED : get_model_metadata wrong_model_name: {message!r}"
    client.close()


def http_async_infer_client(endpoint: Endpoint) -> None:
    """simple_http_async_infer_client.py: two async_infer calls in flight at once (binary tensors)."""
    client = endpoint.http_client(verbose=True, concurrency=2)
    input0, input1 = _add_sub_data()
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(input0, binary_data=True)
    inputs[1].set_data_from_numpy(input1, binary_data=True)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("OUTPUT0", "OUTPUT1")]
    pending = [client.async_infer(model_name="simple", inputs=inputs, outputs=outputs) for _ in range(2)]
    for request in pending:
        _check_add_sub(request.get_result(), input0, input1)
    client.close()


def _string_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """simple_string's inputs: the text of 0..15 and of ones, and the expected sum and difference."""
    in0, in1 = _add_sub_data()
    as_text = np.vectorize(lambda x: str(x).encode("utf-8"), otypes=[np.object_])
    return as_text(in0), as_text(in1), in0 + in1, in0 - in1


def _identity_arrays() -> list[np.ndarray]:
    """A string with an embedded null character, and 4-byte binary blobs (dtype np.bytes_)."""
    nulls = np.array([b"he\x00llo" for _ in range(16)], dtype=np.object_).reshape([1, 16])
    blobs = np.array([b"\x00\x01\x02\x03" for _ in range(16)], dtype=np.bytes_).reshape([1, 16])
    return [nulls, blobs]


def _check_identity(sent: np.ndarray, received: np.ndarray, binary: bool) -> None:
    """simple_*_string_infer_client.py's identity_inference checks."""
    if sent.dtype != np.object_:
        encoded = np.char.encode(received.astype(str))
        assert np.array_equal(sent, encoded), f"error: incorrect output {encoded}"
    elif binary:
        assert np.array_equal(sent, received), f"error: incorrect output {received}"
    else:
        expected = np.array([bytes(str(x), encoding="utf-8") for x in received.flatten()], dtype=np.object_)
        assert np.array_equal(sent, expected.reshape([1, 16])), f"error: incorrect output {received}"


def http_string_infer_client(endpoint: Endpoint) -> None:
    """simple_http_string_infer_client.py: BYTES add/sub (`simple_string`, INPUT0 binary, INPUT1
    JSON), then `simple_identity` with binary and JSON tensors."""
    client = endpoint.http_client(verbose=True)
    input0, input1, expected_sum, expected_diff = _string_inputs()
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
        httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(input0, binary_data=True)
    inputs[1].set_data_from_numpy(input1, binary_data=False)
    results = client.infer("simple_string", inputs, outputs=_http_outputs(httpclient))
    output0, output1 = results.as_numpy("OUTPUT0"), results.as_numpy("OUTPUT1")
    for i in range(16):
        assert expected_sum[0][i] == int(output0[0][i]), "error: incorrect sum"
        assert expected_diff[0][i] == int(output1[0][i]), "error: incorrect difference"
    for array in _identity_arrays():
        for binary in (True, False):
            identity = httpclient.InferInput("INPUT0", list(array.shape), "BYTES")
            identity.set_data_from_numpy(array, binary_data=binary)
            requested = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
            results = client.infer("simple_identity", [identity], outputs=requested)
            _check_identity(array, results.as_numpy("OUTPUT0"), binary)
    client.close()


# --- gRPC ---------------------------------------------------------------------------------------


def _grpc_inputs(module: Any = grpcclient) -> tuple[list[Any], list[Any], np.ndarray, np.ndarray]:
    input0, input1 = _add_sub_data()
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(input0)
    inputs[1].set_data_from_numpy(input1)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    return inputs, outputs, input0, input1


def grpc_health_metadata(endpoint: Endpoint) -> None:
    """simple_grpc_health_metadata.py."""
    client = endpoint.grpc_client(verbose=True)
    assert client.is_server_live(headers={"test": "1", "dummy": "2"}), "FAILED : is_server_live"
    assert client.is_server_ready(), "FAILED : is_server_ready"
    assert client.is_model_ready("simple"), "FAILED : is_model_ready"
    name = client.get_server_metadata().name
    assert name == "triton", f"FAILED : get_server_metadata: name {name!r}"
    assert client.get_model_metadata("simple", headers={"test": "1", "dummy": "2"}).name == "simple"
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("wrong_model_name")
    message = raised.value.message()
    assert UNKNOWN_MODEL in message, f"FAILED : get_model_metadata wrong_model_name: {message!r}"
    assert client.get_model_config("simple").config.name == "simple", "FAILED: get_model_config"
    client.close()


def grpc_infer_client(endpoint: Endpoint, compression_algorithm: str | None = None) -> None:
    """simple_grpc_infer_client.py: with requested outputs (and a header), one model's
    statistics, then without requested outputs."""
    client = endpoint.grpc_client(verbose=True)
    inputs, outputs, input0, input1 = _grpc_inputs()
    results = client.infer(
        model_name="simple",
        inputs=inputs,
        outputs=outputs,
        headers={"test": "1"},
        compression_algorithm=compression_algorithm,
    )
    assert len(client.get_inference_statistics(model_name="simple").model_stats) == 1
    _check_add_sub(results, input0, input1)
    results = client.infer(
        model_name="simple", inputs=inputs, outputs=None, compression_algorithm=compression_algorithm
    )
    _check_add_sub(results, input0, input1)
    client.close()


async def _grpc_aio_infer_client(endpoint: Endpoint) -> None:
    import tritonclient.grpc.aio as aio

    client = endpoint.grpc_aio_client(verbose=True)
    inputs, outputs, input0, input1 = _grpc_inputs(aio)
    try:
        results = await client.infer(
            model_name="simple", inputs=inputs, outputs=outputs, headers={"test": "1"}
        )
        statistics = await client.get_inference_statistics(model_name="simple")
        assert len(statistics.model_stats) == 1
        _check_add_sub(results, input0, input1)
        both = await asyncio.gather(
            client.infer(model_name="simple", inputs=inputs, outputs=None),
            client.infer(model_name="simple", inputs=inputs, outputs=None),
        )
        for result in both:
            _check_add_sub(result, input0, input1)
    finally:
        await client.close()


def grpc_aio_infer_client(endpoint: Endpoint) -> None:
    """simple_grpc_aio_infer_client.py: one request with outputs, then two in parallel."""
    asyncio.run(_grpc_aio_infer_client(endpoint))


def grpc_async_infer_client(endpoint: Endpoint) -> None:
    """simple_grpc_async_infer_client.py: async_infer with a callback, answered within 10 s."""
    client = endpoint.grpc_client(verbose=True)
    inputs, outputs, input0, input1 = _grpc_inputs()
    answers: list[Any] = []
    client.async_infer(
        model_name="simple",
        inputs=inputs,
        callback=lambda result, error: answers.append(error or result),
        outputs=outputs,
    )
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(answers) == 1, "no answer within 10 s"
    assert not isinstance(answers[0], InferenceServerException), str(answers[0])
    _check_add_sub(answers[0], input0, input1)
    client.close()


def grpc_string_infer_client(endpoint: Endpoint) -> None:
    """simple_grpc_string_infer_client.py: BYTES add/sub, then identities (raw contents)."""
    client = endpoint.grpc_client(verbose=True)
    input0, input1, expected_sum, expected_diff = _string_inputs()
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "BYTES"),
        grpcclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(input0)
    inputs[1].set_data_from_numpy(input1)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    results = client.infer(model_name="simple_string", inputs=inputs, outputs=outputs)
    output0, output1 = results.as_numpy("OUTPUT0"), results.as_numpy("OUTPUT1")
    for i in range(16):
        assert expected_sum[0][i] == int(output0[0][i]), "error: incorrect sum"
        assert expected_diff[0][i] == int(output1[0][i]), "error: incorrect difference"
    for array in _identity_arrays():
        identity = grpcclient.InferInput("INPUT0", list(array.shape), "BYTES")
        identity.set_data_from_numpy(array)
        results = client.infer(
            "simple_identity", [identity], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")]
        )
        _check_identity(array, results.as_numpy("OUTPUT0"), binary=True)
    client.close()


def _grpc_simple_with_options(endpoint: Endpoint, **options: Any) -> None:
    client = endpoint.grpc_client(verbose=True, **options)
    inputs, outputs, input0, input1 = _grpc_inputs()
    results = client.infer(model_name="simple", inputs=inputs, outputs=outputs, headers={"test": "1"})
    _check_add_sub(results, input0, input1)
    client.close()


def grpc_keepalive_client(endpoint: Endpoint) -> None:
    """simple_grpc_keepalive_client.py with its default keepalive options."""
    keepalive = grpcclient.KeepAliveOptions(
        keepalive_time_ms=2**31 - 1,
        keepalive_timeout_ms=20000,
        keepalive_permit_without_calls=False,
        http2_max_pings_without_data=2,
    )
    _grpc_simple_with_options(endpoint, keepalive_options=keepalive)


def grpc_custom_args_client(endpoint: Endpoint) -> None:
    """simple_grpc_custom_args_client.py: a channel with custom arguments."""
    channel_args = [
        ("grpc.max_send_message_length", 1024 * 1024),
        ("grpc.max_receive_message_length", 1024 * 1024),
        ("grpc.keepalive_time_ms", 2**31 - 1),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", False),
        ("grpc.http2.max_pings_without_data", 2),
        ("grpc.dns_enable_srv_queries", 1),
    ]
    _grpc_simple_with_options(endpoint, channel_args=channel_args)


def _stub(endpoint: Endpoint) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(endpoint.grpc)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _explicit_request(
    model: str, datatype: str, input0: list[Any], input1: list[Any]
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest with typed `contents` for INPUT0/INPUT1 [1, 16], asking OUTPUT0/OUTPUT1."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version="")
    for name, values in (("INPUT0", input0), ("INPUT1", input1)):
        tensor = service_pb2.ModelInferRequest().InferInputTensor(name=name, datatype=datatype, shape=[1, 16])
        if datatype == "BYTES":
            tensor.contents.bytes_contents.extend(values)
        else:
            tensor.contents.int_contents[:] = values
        request.inputs.append(tensor)
    for name in ("OUTPUT0", "OUTPUT1"):
        request.outputs.append(service_pb2.ModelInferRequest().InferRequestedOutputTensor(name=name))
    return request


def _raw_outputs(response: service_pb2.ModelInferResponse, dtype: object) -> list[np.ndarray]:
    results = []
    for index, output in enumerate(response.outputs):
        raw = response.raw_output_contents[index]
        values = utils.deserialize_bytes_tensor(raw) if dtype is None else np.frombuffer(raw, dtype=dtype)
        results.append(np.resize(values, list(output.shape)))
    assert len(results) == 2, "expected two output results"
    return results


def grpc_explicit_byte_content_client(endpoint: Endpoint) -> None:
    """grpc_explicit_byte_content_client.py: BYTES inputs as `bytes_contents` to `simple_string`."""
    channel, stub = _stub(endpoint)
    with channel:
        request = _explicit_request(
            "simple_string", "BYTES", [f"{i}".encode() for i in range(16)], [b"1" for _ in range(16)]
        )
        sums, differences = _raw_outputs(stub.ModelInfer(request, metadata=endpoint.grpc_metadata), None)
    for i in range(16):
        assert i + 1 == int(sums[0][i]), "explicit string infer error: incorrect sum"
        assert i - 1 == int(differences[0][i]), "explicit string infer error: incorrect difference"


def grpc_explicit_int_content_client(endpoint: Endpoint) -> None:
    """grpc_explicit_int_content_client.py: INT32 `int_contents`, then `contents` and
    `raw_input_contents` for one input together, refused with Triton's text."""
    input0, input1 = list(range(16)), [1] * 16
    channel, stub = _stub(endpoint)
    with channel:
        request = _explicit_request("simple", "INT32", input0, input1)
        sums, differences = _raw_outputs(stub.ModelInfer(request, metadata=endpoint.grpc_metadata), np.int32)
        for i in range(16):
            assert input0[i] + input1[i] == sums[0][i], "sync infer error: incorrect sum"
            assert input0[i] - input1[i] == differences[0][i], "sync infer error: incorrect difference"
        request.raw_input_contents.extend([np.array(input0[0:8]).tobytes()])
        request.inputs[0].contents.int_contents[:] = input0[8:]
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, metadata=endpoint.grpc_metadata)
    expected = (
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'"
    )
    assert expected in str(raised.value), str(raised.value)


def grpc_explicit_int8_content_client(endpoint: Endpoint) -> None:
    """grpc_explicit_int8_content_client.py: INT8 as `int_contents` to `simple_int8`, then a
    version string that is not a number, refused with Triton's text."""
    input0, input1 = list(range(16)), [1] * 16
    channel, stub = _stub(endpoint)
    with channel:
        request = _explicit_request("simple_int8", "INT8", input0, input1)
        sums, differences = _raw_outputs(stub.ModelInfer(request, metadata=endpoint.grpc_metadata), np.int8)
        for i in range(16):
            assert input0[i] + input1[i] == sums[0][i], "sync infer error: incorrect sum"
            assert input0[i] - input1[i] == differences[0][i], "sync infer error: incorrect difference"
        request.model_version = "wrong_specification"
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, metadata=endpoint.grpc_metadata)
    expected = "failed to get model version from specified version string 'wrong_specification'"
    assert expected in str(raised.value), str(raised.value)


def grpc_client(endpoint: Endpoint) -> None:
    """grpc_client.py: every health and metadata RPC, then a 1x299x299x3 FP32 inference with a
    request id and one requested output, on the raw stub (model: the inception stand-in)."""
    model = "inception_libtorch"
    channel, stub = _stub(endpoint)
    metadata = endpoint.grpc_metadata
    with channel:
        stub.ServerLive(service_pb2.ServerLiveRequest(), metadata=metadata)
        stub.ServerReady(service_pb2.ServerReadyRequest(), metadata=metadata)
        stub.ModelReady(service_pb2.ModelReadyRequest(name=model, version=""), metadata=metadata)
        stub.ServerMetadata(service_pb2.ServerMetadataRequest(), metadata=metadata)
        stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model, version=""), metadata=metadata)
        stub.ModelConfig(service_pb2.ModelConfigRequest(name=model, version=""), metadata=metadata)
        request = service_pb2.ModelInferRequest(model_name=model, model_version="", id="my request id")
        request.inputs.append(
            service_pb2.ModelInferRequest().InferInputTensor(
                name="input", datatype="FP32", shape=[1, 299, 299, 3]
            )
        )
        request.outputs.append(
            service_pb2.ModelInferRequest().InferRequestedOutputTensor(name="InceptionV3/Predictions/Softmax")
        )
        request.raw_input_contents.extend([bytes(1072812 * "a", "utf-8")])
        stub.ModelInfer(request, metadata=metadata)


# --- sequences (simple_*_sequence_*_client.py, without -d: `simple_sequence`) --------------------
# The examples' INPUT and OUTPUT are INPUT__0 and OUTPUT__0 in the TorchScript `simple_sequence`.
SEQUENCE_INPUT, SEQUENCE_OUTPUT = "INPUT__0", "OUTPUT__0"

SEQUENCE_VALUES = [11, 7, 5, 3, 2, 0, 1]


def _sequences() -> list[tuple[int | str, list[int]]]:
    """The examples' three sequences: two integer ids and a UUID string id (without -d)."""
    negated = [-v for v in SEQUENCE_VALUES]
    return [(1000, [0, *SEQUENCE_VALUES]), (1001, [100, *negated]), (str(uuid.uuid4()), [20, *negated])]


def _check_sequences(results: list[list[np.ndarray]]) -> None:
    """Each answer is its input, plus 1 for the first of a sequence (1, 101, 21)."""
    int0, int1, text0 = results
    for i in range(len(int0)):
        expected = (
            (1, 101, 21)
            if i == 0
            else (SEQUENCE_VALUES[i - 1], -SEQUENCE_VALUES[i - 1], -SEQUENCE_VALUES[i - 1])
        )
        got = (int0[i][0][0], int1[i][0][0], text0[i][0][0])
        assert got == expected, f"[{i}] got {got}, expected {expected}"


def _sequence_requests(module: Any, sequence_id: int | str, values: list[int]) -> Iterator[dict[str, Any]]:
    for count, value in enumerate(values, start=1):
        tensor = module.InferInput(SEQUENCE_INPUT, [1, 1], "INT32")
        tensor.set_data_from_numpy(np.full([1, 1], value, dtype=np.int32))
        yield {
            "model_name": "simple_sequence",
            "inputs": [tensor],
            "outputs": [module.InferRequestedOutput(SEQUENCE_OUTPUT)],
            "request_id": f"{sequence_id}_{count}",
            "sequence_id": sequence_id,
            "sequence_start": count == 1,
            "sequence_end": count == len(values),
        }


def _sync_sequences(client: Any, module: Any) -> None:
    results = []
    for sequence_id, values in _sequences():
        answers = []
        for request in _sequence_requests(module, sequence_id, values):
            request.pop("request_id")
            answers.append(client.infer(**request).as_numpy(SEQUENCE_OUTPUT))
        results.append(answers)
    _check_sequences(results)


def http_sequence_sync_infer_client(endpoint: Endpoint) -> None:
    """simple_http_sequence_sync_infer_client.py: three sequences, one request at a time."""
    with endpoint.http_client(verbose=True) as client:
        _sync_sequences(client, httpclient)


def grpc_sequence_sync_infer_client(endpoint: Endpoint) -> None:
    """simple_grpc_sequence_sync_infer_client.py: three sequences, one request at a time."""
    with endpoint.grpc_client(verbose=True) as client:
        _sync_sequences(client, grpcclient)


def _sort_stream_answers(
    answers: list[Any], sequences: list[tuple[int | str, list[int]]]
) -> list[list[np.ndarray]]:
    """The stream examples' sorting of answers by the sequence id their request id starts with."""
    by_id: dict[str, list[np.ndarray]] = {str(sequence_id): [] for sequence_id, _ in sequences}
    for answer in answers:
        assert not isinstance(answer, InferenceServerException), str(answer)
        sequence_id = answer.get_response().id.split("_")[0]
        assert sequence_id in by_id, f"unexpected sequence id returned by the server: {sequence_id}"
        by_id[sequence_id].append(answer.as_numpy(SEQUENCE_OUTPUT))
    return [by_id[str(sequence_id)] for sequence_id, _ in sequences]


def grpc_sequence_stream_infer_client(endpoint: Endpoint) -> None:
    """simple_grpc_sequence_stream_infer_client.py: the three sequences on one stream, answers
    matched to their sequence by request id."""
    sequences = _sequences()
    answers: queue.Queue = queue.Queue()
    with endpoint.grpc_client(verbose=True) as client:
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for sequence_id, values in sequences:
            for request in _sequence_requests(grpcclient, sequence_id, values):
                client.async_stream_infer(**request)
        received = [answers.get(timeout=60) for _ in range(sum(len(v) for _, v in sequences))]
        client.stop_stream()
    _check_sequences(_sort_stream_answers(received, sequences))


async def _grpc_aio_sequence_stream(endpoint: Endpoint) -> list[Any]:
    import tritonclient.grpc.aio as aio

    sequences = _sequences()

    async def requests() -> Any:
        for sequence_id, values in sequences:
            for request in _sequence_requests(aio, sequence_id, values):
                yield request

    received = []
    async with endpoint.grpc_aio_client(verbose=True) as client:
        async for result, error in client.stream_infer(inputs_iterator=requests()):
            received.append(error or result)
            if len(received) == sum(len(v) for _, v in sequences):
                break
    return _sort_stream_answers(received, sequences)


def grpc_aio_sequence_stream_infer_client(endpoint: Endpoint) -> None:
    """simple_grpc_aio_sequence_stream_infer_client.py: the three sequences on one asyncio stream."""
    _check_sequences(asyncio.run(_grpc_aio_sequence_stream(endpoint)))
