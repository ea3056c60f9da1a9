"""QA's inference checkers, ported from r24.10 `qa/common/infer_util.py` (`infer_exact`,
`inferAndCheckResults`, `infer_zero`) without their shared-memory and classification branches.

Each request goes out the ways QA sends it: HTTP with binary tensors, HTTP with JSON tensors
(not for FP16), gRPC, and gRPC streaming; every answer is checked for the model name, the version
asked for, the number of outputs and each output's values.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from tests.e2e.qa.models import STRING, model_name, zero_model_name
from tests.e2e.qa.targets import Endpoint

# Request ids are unique per process; an answer must echo an id never seen before.
_request_ids = itertools.count(1)
_seen_request_ids: set[int] = set()


@dataclass(frozen=True)
class Way:
    """One way QA sends a request: protocol, streaming, binary tensors (HTTP only)."""

    protocol: str
    streaming: bool
    binary: bool


def ways(
    dtypes: Sequence[object], use_http_json_tensors: bool = True, use_streaming: bool = True
) -> list[Way]:
    """`infer_util`'s `configs`: HTTP binary, HTTP JSON unless FP16 is involved, gRPC, gRPC stream."""
    found = [Way("http", False, True)]
    if use_http_json_tensors and all(np.dtype(d) != np.float16 for d in dtypes):
        found.append(Way("http", False, False))
    found.append(Way("grpc", False, False))
    if use_streaming:
        found.append(Way("grpc", True, False))
    return found


def _range_repr_dtype(dtype: object) -> np.dtype:
    """`infer_util._range_repr_dtype`: the integer range a dtype's test values come from."""
    ranges = {np.float64: np.int32, np.float32: np.int16, np.float16: np.int8, np.object_: np.int32}
    return np.dtype(ranges.get(np.dtype(dtype).type, dtype))


def _as_text(array: np.ndarray) -> np.ndarray:
    """QA's expected BYTES values: each element's decimal text, UTF-8."""
    return np.array([str(x).encode() for x in array.flatten()], dtype=object).reshape(array.shape)


def _send(
    endpoint: Endpoint,
    way: Way,
    model: str,
    arrays: dict[str, np.ndarray],
    outputs: Sequence[str],
    model_version: str,
) -> Any:
    """One request the QA way; returns the InferResult (raises the server's error)."""
    module: Any = httpclient if way.protocol == "http" else grpcclient
    inputs, requested = [], []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if way.protocol == "http":
            tensor.set_data_from_numpy(array, binary_data=way.binary)
            requested = [httpclient.InferRequestedOutput(o, binary_data=way.binary) for o in outputs]
        else:
            tensor.set_data_from_numpy(array)
            requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        inputs.append(tensor)
    request_id = str(next(_request_ids))
    if way.protocol == "http":
        with endpoint.http_client(network_timeout=60.0) as client:
            return client.infer(
                model, inputs, model_version=model_version, outputs=requested, request_id=request_id
            )
    with endpoint.grpc_client() as client:
        if not way.streaming:
            return client.infer(
                model, inputs, model_version=model_version, outputs=requested, request_id=request_id
            )
        answers: queue.Queue = queue.Queue()
        client.start_stream(lambda result, error: answers.put((result, error)))
        try:
            client.async_stream_infer(
                model, inputs, model_version=model_version, outputs=requested, request_id=request_id
            )
        finally:
            client.stop_stream()
        result, error = answers.get(timeout=60)
        if error is not None:
            raise error
        return result


def _received(result: Any, way: Way, name: str) -> np.ndarray:
    """An output as QA compares it: BYTES that came as JSON text become UTF-8 bytes."""
    data = result.as_numpy(name)
    if data.dtype != np.object_ or way.binary:
        return data
    values = [x if isinstance(x, bytes) else str(x).encode() for x in data.flatten()]
    return np.array(values, dtype=object).reshape(data.shape)


def _check_answer(
    result: Any, way: Way, model: str, model_version: str, expected: dict[str, np.ndarray], check_id: bool
) -> None:
    response = result.get_response()
    if way.protocol == "http":
        name, version, outputs, request_id = (
            response["model_name"], response.get("model_version"), response["outputs"], response.get("id")
        )  # fmt: skip
        output_names = [o["name"] for o in outputs]
    else:
        name, version, outputs, request_id = (
            response.model_name,
            response.model_version,
            response.outputs,
            response.id,
        )
        output_names = [o.name for o in outputs]
    if check_id:
        assert int(request_id) not in _seen_request_ids, f"request_id: {request_id}"
        _seen_request_ids.add(int(request_id))
    assert name == model
    if model_version:
        assert str(version) == model_version
    assert len(outputs) == len(expected)
    for output in output_names:
        assert output in expected, f"unexpected raw result {output}"
        data = _received(result, way, output)
        assert np.array_equal(data, expected[output]), (
            f"{model}, {output} expected: {expected[output]}, got {data}"
        )


def _platform(endpoint: Endpoint, model: str) -> str:
    with endpoint.http_client() as client:
        return client.get_model_metadata(model)["platform"]


def infer_exact(
    endpoint: Endpoint,
    rng: np.random.Generator,
    prefix: str,
    tensor_shape: tuple[int, ...],
    batch_size: int,
    input_dtype: object,
    output0_dtype: object,
    output1_dtype: object,
    model_version: int | None = None,
    swap: bool = False,
    outputs: Sequence[str] = ("OUTPUT0", "OUTPUT1"),
    use_http_json_tensors: bool = True,
    skip_request_id_check: bool = False,
    use_streaming: bool = True,
) -> None:
    """`infer_util.infer_exact` for raw outputs: the add/sub models' sum and difference, exact.

    Test values come from half the range of the narrowest dtype involved, so nothing overflows;
    with unsigned types the larger value goes first."""
    input_dtype, output0_dtype, output1_dtype = (
        np.dtype(d) for d in (input_dtype, output0_dtype, output1_dtype)
    )
    value_dtypes = [_range_repr_dtype(d) for d in (input_dtype, output0_dtype, output1_dtype)]
    low = int(max(np.iinfo(d).min for d in value_dtypes) / 2)
    high = int(min(np.iinfo(d).max for d in value_dtypes) / 2)
    input0 = rng.integers(low, high, size=tensor_shape, dtype=value_dtypes[0])
    input1 = rng.integers(low, high, size=tensor_shape, dtype=value_dtypes[0])
    if input_dtype != STRING:
        input0, input1 = input0.astype(input_dtype), input1.astype(input_dtype)
    if low == 0:
        input0, input1 = np.maximum(input0, input1), np.minimum(input0, input1)
    output0, output1 = (input0 - input1, input0 + input1) if swap else (input0 + input1, input0 - input1)
    expected_values = [
        _as_text(values) if dtype == STRING else values.astype(dtype)
        for values, dtype in ((output0, output0_dtype), (output1, output1_dtype))
    ]
    if input_dtype == STRING:
        input0 = np.array([str(x) for x in input0.flatten()], dtype=object).reshape(input0.shape)
        input1 = np.array([str(x) for x in input1.flatten()], dtype=object).reshape(input1.shape)

    model = model_name(prefix, input_dtype, output0_dtype, output1_dtype)
    names = (
        ("OUTPUT__0", "OUTPUT__1")
        if _platform(endpoint, model) == "pytorch_libtorch"
        else ("OUTPUT0", "OUTPUT1")
    )
    expected = {
        names[i]: expected_values[i] for i, output in enumerate(("OUTPUT0", "OUTPUT1")) if output in outputs
    }
    version = "" if model_version is None else str(model_version)
    for way in ways((input_dtype, output0_dtype, output1_dtype), use_http_json_tensors, use_streaming):
        result = _send(endpoint, way, model, {"INPUT0": input0, "INPUT1": input1}, list(expected), version)
        _check_answer(result, way, model, version, expected, not skip_request_id_check)


def infer_zero(
    endpoint: Endpoint,
    rng: np.random.Generator,
    prefix: str,
    tensor_dtype: object,
    input_shapes: Sequence[Sequence[int]],
    output_shapes: Sequence[Sequence[int]],
) -> None:
    """`infer_util.infer_zero`: identity models `<prefix>_zero_<n>_<dtype>`, each output equal to
    its input, including tensors with zero elements."""
    dtype = np.dtype(tensor_dtype)
    assert len(input_shapes) == len(output_shapes)
    model = zero_model_name(prefix, len(input_shapes), dtype)
    libtorch = _platform(endpoint, model) == "pytorch_libtorch"
    arrays, expected = {}, {}
    for i, (input_shape, output_shape) in enumerate(zip(input_shapes, output_shapes, strict=True)):
        value_dtype = _range_repr_dtype(dtype)
        if value_dtype == np.bool_:
            array = rng.choice([False, True], size=input_shape)
        else:
            info = np.iinfo(value_dtype)
            array = rng.integers(info.min, info.max, size=input_shape, dtype=value_dtype)
        if dtype == STRING:
            expected_array = _as_text(array)
            array = np.array([str(x) for x in array.flatten()], dtype=object).reshape(array.shape)
        else:
            array = array.astype(dtype)
            expected_array = array.copy()
        arrays[f"INPUT__{i}" if libtorch else f"INPUT{i}"] = array
        expected[f"OUTPUT__{i}" if libtorch else f"OUTPUT{i}"] = expected_array.reshape(output_shape)
    for way in ways((dtype,)):
        result = _send(endpoint, way, model, arrays, list(expected), "")
        _check_answer(result, way, model, "", expected, check_id=False)
        for name, values in expected.items():
            assert result.as_numpy(name).shape == values.shape
