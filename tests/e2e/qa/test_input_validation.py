"""qa/L0_input_validation/input_validation_test.py (r24.10): InputValTest (gRPC, inputs missing
against required and optional ones) and InputShapeTest's tests that need no shared memory.

`input_optional` and `input_all_optional` are Python-backend models as in QA (Triton's PyTorch
backend refuses optional inputs); `input_all_required` is TorchScript. The string-shape test runs on
`libtorch_nobatch_object_int32_int32` (QA: graphdef_object_int32_int32, batching: libtorch takes
strings only without batching), so its shape has no batch dimension.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.e2e.qa.targets import Endpoint, Target, by_design, unavailable, unavailable_on_torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _refused(server: Endpoint, model: str, inputs: list[grpcclient.InferInput]) -> str:
    with server.grpc_client() as client, pytest.raises(InferenceServerException) as raised:
        client.infer(model_name=model, inputs=inputs)
    return str(raised.value)


def _one_input() -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.arange(1, dtype=np.float32))
    return [tensor]


def test_input_validation_required_empty(server: Endpoint) -> None:
    """InputValTest.test_input_validation_required_empty."""
    assert (
        "expected 3 inputs but got 0 inputs for model 'input_all_required'. Got input(s) [], but missing "
        "required input(s) ['INPUT0','INPUT1','INPUT2']. Please provide all required input(s)."
    ) in _refused(server, "input_all_required", [])


def _refusal(target: Target, model: str, text: str) -> str:
    """What a refused request to `model` says: Triton's `text`; where the target refuses the
    model by design (runtime: torch, a Python-backend model), its UNAVAILABLE reason."""
    if not by_design(target, model):
        return text
    return f"[StatusCode.UNAVAILABLE] Request for unknown model: '{model}' has no available versions; " + (
        unavailable(model)
    )


def test_input_validation_optional_empty(target: Target) -> None:
    """InputValTest.test_input_validation_optional_empty."""
    assert _refusal(
        target,
        "input_optional",
        "expected number of inputs between 3 and 4 but got 0 inputs for model 'input_optional'. Got "
        "input(s) [], but missing required input(s) ['INPUT0','INPUT1','INPUT2']. Please provide all "
        "required input(s).",
    ) in _refused(target.main, "input_optional", [])


def test_input_validation_required_missing(server: Endpoint) -> None:
    """InputValTest.test_input_validation_required_missing."""
    assert (
        "expected 3 inputs but got 1 inputs for model 'input_all_required'. Got input(s) ['INPUT0'], but "
        "missing required input(s) ['INPUT1','INPUT2']. Please provide all required input(s)."
    ) in _refused(server, "input_all_required", _one_input())


def test_input_validation_optional(target: Target) -> None:
    """InputValTest.test_input_validation_optional."""
    assert _refusal(
        target,
        "input_optional",
        "expected number of inputs between 3 and 4 but got 1 inputs for model 'input_optional'. Got "
        "input(s) ['INPUT0'], but missing required input(s) ['INPUT1','INPUT2']. Please provide all "
        "required input(s).",
    ) in _refused(target.main, "input_optional", _one_input())


def test_input_validation_all_optional(target: Target) -> None:
    """InputValTest.test_input_validation_all_optional: no input at all is a valid request (on
    runtime: torch a Python-backend model, UNAVAILABLE by design)."""
    with unavailable_on_torch(target, "input_all_optional"), target.main.grpc_client() as client:
        response = client.infer(model_name="input_all_optional", inputs=[]).get_response()
        assert str(response.outputs[0].name) in "OUTPUT0"


def test_input_shape_validation(server: Endpoint) -> None:
    """InputShapeTest.test_input_shape_validation: raw contents larger than the shape says."""
    data = np.arange(8)[None].astype(np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), np_to_triton_dtype(data.dtype))
    tensor.set_data_from_numpy(data)
    with server.grpc_client() as client:
        client.infer(model_name="pt_identity", inputs=[tensor])
    larger = np.arange(10)[None].astype(np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(larger.shape), np_to_triton_dtype(larger.dtype))
    tensor.set_data_from_numpy(larger)
    tensor.set_shape((1, 8))
    assert (
        "input byte size mismatch for input 'INPUT0' for model 'pt_identity'. Expected 32, got 40"
        in _refused(server, "pt_identity", [tensor])
    )


def test_input_string_shape_validation(server: Endpoint, rng: np.random.Generator) -> None:
    """InputShapeTest.test_input_string_shape_validation: fewer and more strings than the shape."""
    model = "libtorch_nobatch_object_int32_int32"
    size = 16

    def inputs(count: int) -> list[grpcclient.InferInput]:
        values = np.array([str(x) for x in rng.integers(0, 127, size=count, dtype=np.int32)], dtype=object)
        tensors = []
        for name in ("INPUT0", "INPUT1"):
            tensor = grpcclient.InferInput(name, list(values.shape), "BYTES")
            tensor.set_data_from_numpy(values)
            tensor.set_shape((size,))
            tensors.append(tensor)
        return tensors

    assert (
        f"expected {size} string elements for inference input 'INPUT1' for model '{model}', got {size - 2}"
    ) in _refused(server, model, inputs(size - 2))
    assert (
        f"unexpected number of string elements {size + 1} for inference input 'INPUT1' for model '{model}', "
        f"expecting {size}"
    ) in _refused(server, model, inputs(size + 2))
