"""Request validation against the model signature, before any model runs; raw binary requests
shaped to the model's one input; the error table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app import __version__
from serve_app.dataplane import SERVED_EXTENSIONS, DataPlane
from serve_app.errors import (
    InternalError,
    InvalidInputError,
    ModelControlDisabledError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    ServeAppError,
    from_triton,
    status_for,
    summarize,
)
from serve_app.http_codec import decode_request
from serve_app.infer_types import InferRequest, InputTensor, Limits, RequestedOutput
from serve_app.model_state.replica import DeploymentModels
from serve_app.repository import ModelSignature, TensorSpec
from serve_app.request_checks import (
    Expected,
    infer_options,
    load_parameters,
    requested_outputs,
    resolve_raw_input,
    validate_inputs,
)
from serve_app.runtimes.base import NO_OPTIONS, InferOptions
from serve_app.runtimes.torch.runtime import TorchRuntime
from tests.unit.http_bodies import decode, json_input

BATCHED = ModelSignature(
    name="batched",
    max_batch_size=4,
    inputs=(TensorSpec("x", "FP32", (-1, 3)), TensorSpec("ids", "INT64", (2,))),
    outputs=(TensorSpec("out_a", "FP32", (3,)), TensorSpec("out_b", "INT64", (1,))),
)
UNBATCHED = ModelSignature(
    name="unbatched",
    max_batch_size=0,
    inputs=(TensorSpec("x", "INT32", (2, -1)),),
    outputs=(TensorSpec("y", "INT32", (2, -1)),),
)

NP_BY_DATATYPE = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP64": np.float64}


def tensor(name: str, shape: tuple[int, ...], datatype: str = "FP32") -> InputTensor:
    return InputTensor(name, datatype, shape, np.zeros(shape, NP_BY_DATATYPE[datatype]))


def batched_inputs(batch: int = 2, width: int = 5) -> list[InputTensor]:
    return [tensor("x", (batch, width, 3)), tensor("ids", (batch, 2), "INT64")]


def test_valid_inputs_are_returned_by_name() -> None:
    arrays = validate_inputs(Expected(BATCHED), batched_inputs(batch=3, width=7))
    assert sorted(arrays) == ["ids", "x"]
    assert arrays["x"].shape == (3, 7, 3) and arrays["ids"].shape == (3, 2)


def test_variable_dims_accept_any_size_and_unbatched_models_take_the_shape_as_is() -> None:
    for width in (1, 9):
        validate_inputs(Expected(BATCHED), batched_inputs(width=width))
    arrays = validate_inputs(Expected(UNBATCHED), [tensor("x", (2, 11), "INT32")])
    assert arrays["x"].shape == (2, 11)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [tensor("x", (2, 5, 3), "FP64"), tensor("ids", (2, 2), "INT64")],
            "inference input 'x' data-type is 'FP64', but model 'batched' expects 'FP32'",
        ),
        (
            [tensor("x", (2, 5, 4)), tensor("ids", (2, 2), "INT64")],
            "unexpected shape for input 'x' for model 'batched'. Expected [-1,-1,3], got [2,5,4]. "
            "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension",
        ),
        ([tensor("x", (2, 3)), tensor("ids", (2, 2), "INT64")], "Expected [-1,-1,3], got [2,3]"),
        (
            [tensor("x", ()), tensor("ids", (2, 2), "INT64")],
            "input 'x' has no shape but model requires batch dimension for 'batched'",
        ),
        (
            [tensor("x", (5, 1, 3)), tensor("ids", (5, 2), "INT64")],
            "inference request batch-size must be <= 4 for 'batched'",
        ),
        ([tensor("x", (0, 1, 3)), tensor("ids", (0, 2), "INT64")], "batch-size 0"),
        (
            [tensor("x", (2, 5, 3))],
            "expected 2 inputs but got 1 inputs for model 'batched'. Got input(s) ['x'], but missing "
            "required input(s) ['ids']. Please provide all required input(s).",
        ),
        (
            [],
            "expected 2 inputs but got 0 inputs for model 'batched'. Got input(s) [], but missing required "
            "input(s) ['x','ids'].",
        ),
        (
            [tensor("x", (2, 5, 3)), tensor("extra", (2, 1))],
            "unexpected inference input 'extra' for model 'batched'",
        ),
        (
            [*batched_inputs(), tensor("extra", (2, 1))],
            "expected 2 inputs but got 3 inputs for model 'batched'. Got input(s) ['extra','ids','x']",
        ),
        ([tensor("x", (2, 5, 3)), tensor("x", (2, 5, 3))], "input 'x' already exists in request"),
        ([*batched_inputs(), tensor("x", (2, 5, 3))], "input 'x' already exists in request"),
        (  # Triton checks the last input first: the one whose batch differs from it is named
            [tensor("x", (2, 5, 3)), tensor("ids", (3, 2), "INT64")],
            "input 'x' batch size does not match other inputs for 'batched'",
        ),
        (  # of two wrong inputs, the last is named, as Triton's input map orders a few inputs
            [tensor("x", (2, 5, 3), "FP64"), tensor("ids", (2, 2), "FP32")],
            "inference input 'ids' data-type is 'FP32', but model 'batched' expects 'INT64'",
        ),
    ],
)
def test_invalid_batched_inputs_are_refused(inputs: list[InputTensor], message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_inputs(Expected(BATCHED), inputs)
    assert message in str(info.value)
    assert status_for(info.value) == 400


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 2, 5), "Expected [2,-1], got [1,2,5]"),  # no implicit batch dimension
        ((3, 5), "Expected [2,-1], got [3,5]"),
    ],
)
def test_invalid_unbatched_shapes_are_refused(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_inputs(Expected(UNBATCHED), [tensor("x", shape, "INT32")])


OPTIONAL = ModelSignature(
    name="optional",
    max_batch_size=0,
    inputs=(
        TensorSpec("a", "FP32", (1,)),
        TensorSpec("b", "FP32", (1,)),
        TensorSpec("c", "FP32", (1,), optional=True),
    ),
    outputs=(TensorSpec("y", "FP32", (1,)),),
)


def test_optional_inputs_may_be_left_out_and_required_ones_not() -> None:
    """Triton's rule: `optional: true` inputs are not required; its texts name the range."""
    assert sorted(validate_inputs(Expected(OPTIONAL), [tensor("a", (1,)), tensor("b", (1,))])) == ["a", "b"]
    assert len(validate_inputs(Expected(OPTIONAL), [tensor(n, (1,)) for n in "abc"])) == 3
    with pytest.raises(InvalidInputError) as info:
        validate_inputs(Expected(OPTIONAL), [])
    assert str(info.value) == (
        "expected number of inputs between 2 and 3 but got 0 inputs for model 'optional'. Got input(s) [], "
        "but missing required input(s) ['a','b']. Please provide all required input(s)."
    )
    with pytest.raises(InvalidInputError) as info:  # as many inputs as required, one of them optional
        validate_inputs(Expected(OPTIONAL), [tensor("a", (1,)), tensor("c", (1,))])
    assert "Got input(s) ['c','a'], but missing required input(s) ['b']" in str(info.value)


VALID_OVERRIDE = (
    '{"name": "m", "max_batch_size": "16", "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}]}'
)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"config": "{{"},
            "failed to load 'm', failed to poll from model repository: Invalid config override",
        ),
        (
            {"config": '{"max_batch_size": "many"}'},
            "failed to poll from model repository: Invalid config override",
        ),
        ({"config": '{"name": "other"}'}, "the config override names the model 'other'"),
        ({"config": 16}, "load parameter 'config' must be a string"),
        ({"file:1/model.pt": "AAAA"}, "load parameter 'file:1/model.pt': file overrides are not supported"),
        ({"other": "x"}, "failed to poll from model repository: Unrecognized load parameter 'other'"),
    ],
)
def test_load_parameters_are_checked_before_anything_changes(parameters: dict, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        load_parameters("m", parameters)
    assert message in str(info.value)
    assert status_for(info.value) == 400


def test_a_valid_config_override_is_the_loads_parameter() -> None:
    assert load_parameters("m", {"config": VALID_OVERRIDE}) == {"config": VALID_OVERRIDE}
    assert load_parameters("m", {}) == {}


def request(outputs: list[RequestedOutput] | None, binary_output: bool = False) -> InferRequest:
    return InferRequest("batched", None, batched_inputs(), outputs=outputs, binary_output=binary_output)


def test_all_outputs_in_model_order_when_none_are_named() -> None:
    assert list(requested_outputs(Expected(BATCHED), request(None))) == [
        RequestedOutput("out_a", False),
        RequestedOutput("out_b", False),
    ]
    assert list(requested_outputs(Expected(BATCHED), request(None, binary_output=True))) == [
        RequestedOutput("out_a", True),
        RequestedOutput("out_b", True),
    ]


def test_named_outputs_keep_their_order_and_flags() -> None:
    wanted = [RequestedOutput("out_b", True)]
    assert requested_outputs(Expected(BATCHED), request(wanted)) == wanted


def test_unknown_requested_output_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="unexpected inference output 'nope' for model 'batched'"):
        wanted = [RequestedOutput("out_a", False), RequestedOutput("nope", False)]
        requested_outputs(Expected(BATCHED), request(wanted))


def test_error_statuses() -> None:
    assert {
        cls: status_for(cls("m"))
        for cls in (
            InvalidInputError,
            ModelControlDisabledError,
            ModelNotFoundError,
            PayloadTooLargeError,
            InternalError,
            ModelNotReadyError,
            ServeAppError,
        )
    } == {
        InvalidInputError: 400,
        ModelControlDisabledError: 503,
        ModelNotFoundError: 404,
        PayloadTooLargeError: 413,
        InternalError: 500,
        ModelNotReadyError: 503,
        ServeAppError: 500,
    }

    class Subclass(ModelNotFoundError):
        pass

    assert status_for(Subclass("m")) == 404


def test_triton_errors_map_by_class_name_and_summaries_drop_tracebacks() -> None:
    class UnavailableError(Exception):
        pass

    class SomethingNew(Exception):
        pass

    assert isinstance(from_triton(UnavailableError("x")), ModelNotReadyError)
    assert isinstance(from_triton(SomethingNew("x")), InternalError)
    assert summarize(RuntimeError("Traceback:\n  File x\n\nRuntimeError: the real reason\n")) == (
        "RuntimeError: the real reason"
    )
    assert summarize(RuntimeError("")) == "RuntimeError"


# --- DataPlane over the embedded runtime ------------------------------------------------------


@pytest.mark.anyio
async def test_dataplane_infers_and_shapes_the_response(
    runtime: TorchRuntime, example_repository: Path, torch_reference
) -> None:
    dataplane = DataPlane(
        runtime, DeploymentModels.in_process(runtime), model_control=False, placement={"gpu_ids": []}
    )
    x = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    response = await dataplane.infer(
        InferRequest(
            "int_ops",
            None,
            [InputTensor("INPUT__0", "INT32", (2, 3), x)],
            outputs=[RequestedOutput("OUTPUT__1", True)],
            id="q",
            parameters={"p": 1},
        )
    )
    assert (response.model_name, response.model_version, response.id, response.parameters) == (
        "int_ops",
        "1",
        "q",
        {"p": 1},
    )
    [(requested, array)] = response.outputs
    assert requested == RequestedOutput("OUTPUT__1", True)
    np.testing.assert_array_equal(array, torch_reference(example_repository, "int_ops", x)[1])


@pytest.mark.anyio
async def test_dataplane_validates_before_the_model_runs(runtime: TorchRuntime) -> None:
    dataplane = DataPlane(runtime, DeploymentModels.in_process(runtime), model_control=False, placement={})
    bad = InferRequest(
        "linear", None, [InputTensor("input__0", "FP32", (1, 15), np.zeros((1, 15), np.float32))]
    )
    with pytest.raises(InvalidInputError, match=r"Expected \[-1,16\], got \[1,15\]"):
        await dataplane.infer(bad)
    assert runtime.statistics("linear", None)["model_stats"][0]["execution_count"] == 0
    with pytest.raises(ModelNotFoundError, match=r"^Request for unknown model: 'nope' is not found$"):
        await dataplane.infer(InferRequest("nope", None, []))
    with pytest.raises(
        ModelNotFoundError, match=r"^Request for unknown model: 'linear' version 2 is not found$"
    ):
        await dataplane.infer(InferRequest("linear", "2", []))
    with pytest.raises(InvalidInputError, match="version string 'x' \\(details: stol\\)"):
        await dataplane.infer(InferRequest("linear", "x", []))


@pytest.mark.anyio
async def test_dataplane_metadata_and_model_control(runtime: TorchRuntime) -> None:
    models = DeploymentModels.in_process(runtime)
    await models.join()
    dataplane = DataPlane(runtime, models, model_control=False, placement={"gpu_ids": [3]})
    assert dataplane.live() and dataplane.ready()
    metadata = dataplane.server_metadata()
    assert metadata["name"] == "triton"
    assert metadata["serve_app"] == {
        "version": __version__,
        "runtime": "torch",
        "device": "cpu",
        "gpu_ids": [3],
        "loaded_models": ["image_classifier", "int_ops", "linear", "multi_io"],
        "model_loads": 4,
    }
    # Exactly what is served: the torch runtime honours neither priorities nor sequences.
    assert metadata["extensions"] == list(SERVED_EXTENSIONS)
    assert dataplane.model_ready("linear", "1") == {"name": "linear", "ready": True}
    assert [r["name"] for r in await dataplane.repository_index(ready_only=True)] == [
        "image_classifier",
        "int_ops",
        "linear",
        "multi_io",
    ]
    with pytest.raises(
        ModelControlDisabledError, match=r"^explicit model load / unload is not allowed if polling"
    ):
        await dataplane.load("linear", {})
    with pytest.raises(ModelControlDisabledError):
        await dataplane.unload("linear")
    controlled = DataPlane(runtime, models, model_control=True, placement={})
    with pytest.raises(ModelNotFoundError, match="Request for unknown model: 'nope' is not found"):
        await controlled.unload("nope")
    await controlled.unload("linear")
    with pytest.raises(ModelNotReadyError):
        dataplane.model_ready("linear", None)
    assert {
        "name": "linear",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    } in await controlled.repository_index()
    assert "linear" not in [r["name"] for r in await controlled.repository_index(ready_only=True)]
    await models.stop()


class ReloadingRuntime:
    """Serves `signature`, which a test replaces as a reload would; answers zeros."""

    def __init__(self, signature: ModelSignature) -> None:
        self.signature_now = signature

    def resolve(self, model: str, version: str | None) -> str:
        return "1"

    def signature(self, model: str, version: str) -> ModelSignature:
        return self.signature_now

    async def infer(
        self, model: str, version: str, inputs: dict, output_names: list[str], options: InferOptions
    ) -> dict[str, np.ndarray]:
        return {name: np.zeros(1, np.float32) for name in output_names}


@pytest.mark.anyio
async def test_a_reloaded_signature_is_validated_against_anew() -> None:
    runtime = ReloadingRuntime(UNBATCHED)
    dataplane = DataPlane(runtime, DeploymentModels.in_process(runtime), model_control=False, placement={})  # type: ignore[arg-type]
    request = InferRequest("m", None, [tensor("x", (2, 3), "INT32")])
    assert [o.name for o, _ in (await dataplane.infer(request)).outputs] == ["y"]
    runtime.signature_now = ModelSignature("m", 0, (TensorSpec("z", "INT32", (2, -1)),), UNBATCHED.outputs)
    with pytest.raises(InvalidInputError, match="unexpected inference input 'x' for model 'm'"):
        await dataplane.infer(request)


def test_scheduling_parameters_become_infer_options() -> None:
    options = infer_options(
        {
            "priority": 2,
            "timeout": 500,
            "sequence_id": "s-1",
            "sequence_start": True,
            "tag": 1.5,
            "flag": False,
        }
    )
    assert (options.priority, options.timeout_us, options.sequence_id) == (2, 500, "s-1")
    assert options.sequence_start and not options.sequence_end
    assert options.parameters == (("tag", 1.5), ("flag", False))
    assert infer_options({}) is NO_OPTIONS  # the runtimes skip applying the defaults


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"priority": "high"}, "'priority' must be integer"),
        ({"priority": True}, "'priority' must be integer"),
        ({"timeout": -1}, "between 0 and 2\\*\\*64 - 1"),
        ({"sequence_id": 1.5}, "'sequence_id' must be integer or string"),
        ({"sequence_start": 1}, "'sequence_start' must be boolean"),
        ({"custom": {"nested": 1}}, "'custom' must be a string, number or boolean"),
        ({"custom": [1]}, "'custom' must be a string, number or boolean"),
    ],
)
def test_parameters_of_the_wrong_type_are_invalid(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        infer_options(parameters)


@pytest.mark.anyio
async def test_a_raw_binary_request_is_the_models_one_input(runtime: TorchRuntime) -> None:
    """Triton's Inference-Header-Content-Length: 0 request, shaped from the model's signature."""
    dataplane = DataPlane(runtime, DeploymentModels.in_process(runtime), model_control=False, placement={})
    x = np.arange(16, dtype=np.float32)
    request = decode_request("linear", None, x.tobytes(), "0", limits=Limits(max_bytes=1 << 20))
    response = await dataplane.infer(request)
    [(output, array)] = response.outputs
    assert output.name == "output__0" and output.binary and array.shape == (1, 4)
    two_inputs = decode_request("multi_io", None, x.tobytes(), "0", limits=Limits(max_bytes=1 << 20))
    with pytest.raises(InvalidInputError, match=r"Raw request must only have 1 input \(found 1\)"):
        await dataplane.infer(two_inputs)


# --- raw binary requests (Inference-Header-Content-Length: 0) -----------------------------


def signature(max_batch_size: int, *inputs: tuple[str, str, tuple[int, ...]]) -> ModelSignature:
    return ModelSignature(
        "raw", max_batch_size, tuple(TensorSpec(*spec) for spec in inputs), (TensorSpec("y", "FP32", (1,)),)
    )


@pytest.mark.parametrize(
    ("max_batch_size", "dims", "datatype", "array", "shape"),
    [
        (0, (2, 3), "INT32", np.arange(6, dtype=np.int32), (2, 3)),
        (64, (16,), "FP32", np.linspace(0, 1, 16, dtype=np.float32), (1, 16)),  # batch of 1
        (4, (-1,), "FP32", np.ones(5, np.float32), (1, 5)),
        (0, (2, -1), "FP16", np.arange(6, dtype=np.float16), (2, 3)),
        (0, (-1,), "UINT8", np.zeros(0, np.uint8), (0,)),
        (0, (), "BOOL", np.array([True]), ()),
    ],
)
def test_raw_input_takes_the_models_one_input(
    max_batch_size: int, dims: tuple[int, ...], datatype: str, array: np.ndarray, shape: tuple[int, ...]
) -> None:
    raw = decode(array.tobytes(), 0)
    request = resolve_raw_input(raw, signature(max_batch_size, ("x", datatype, dims)))
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, shape)
    np.testing.assert_array_equal(tensor.array, array.reshape(shape))
    assert tensor.array.dtype == array.dtype
    assert request.raw_input is None and request.binary_output is True


@pytest.mark.parametrize(
    ("max_batch_size", "dims", "shape"), [(0, (1,), (1,)), (4, (1,), (1, 1)), (0, (), ())]
)
def test_raw_input_of_a_bytes_model_is_its_one_element(
    max_batch_size: int, dims: tuple[int, ...], shape: tuple[int, ...]
) -> None:
    """http_test.py test_byte: Triton takes a raw BYTES input of one element, the body (no prefix)."""
    [tensor] = resolve_raw_input(decode(b"427", 0), signature(max_batch_size, ("x", "BYTES", dims))).inputs
    assert tensor.shape == shape and tensor.array.shape == shape
    assert tensor.array.reshape(-1).tolist() == [b"427"]


def test_requests_with_a_json_header_pass_through_unchanged() -> None:
    request = decode({"inputs": [json_input("x", "FP32", [1], [1])]})
    assert resolve_raw_input(request, signature(0, ("a", "FP32", (1,)), ("b", "FP32", (1,)))) is request


@pytest.mark.parametrize(
    ("inputs", "nbytes", "message"),
    [
        (
            (("a", "FP32", (1,)), ("b", "FP32", (1,))),
            4,
            "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'raw' model "
            "configuration",
        ),
        ((), 4, "Raw request must only have 1 input (found 1) to be deduced but got 0 inputs in 'raw'"),
        (
            (("x", "FP32", (-1, -1)),),
            16,
            "The shape of the raw input 'x' can not be deduced because there are more than one "
            "variable-sized dimension",
        ),
        (
            (("x", "FP32", (4,)),),
            12,
            "input byte size mismatch for input 'x' for model 'raw'. Expected 16, got 12",
        ),
        (
            (("x", "FP32", (-1, 2)),),
            12,
            "input byte size mismatch for input 'x' for model 'raw'. Expected 8, got 12",
        ),
        ((("x", "FP32", (-1, 0)),), 8, "Expected 0, got 8"),  # zero-sized rows cannot decide the dim
        ((("x", "BYTES", (-1,)),), 8, "For BYTE datatype raw input 'x', the model must have input shape [1]"),
        ((("x", "BYTES", (2,)),), 8, "For BYTE datatype raw input 'x', the model must have input shape [1]"),
    ],
)
def test_raw_input_refusals_name_the_rule(inputs: tuple, nbytes: int, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        resolve_raw_input(decode(bytes(nbytes), 0), signature(0, *inputs))
    assert message in str(info.value)
