"""Triton's gRPC API over a real `serve run`, through Serve's gRPC ingress on the shipped path
(HAProxy → each replica's own gRPC server).

Clients are `tritonclient.grpc` (sync, streaming and `tritonclient.grpc.aio`), unchanged, and its
generated stub for typed contents. One `serve run` per runtime serves two applications: `triton`
(configs/app.yaml's, model control off) and `control` (model control on, a broken entry beside
the examples). With two applications HAProxy routes gRPC by Serve's `application` metadata,
which a tritonclient plugin adds to every call. Outputs are compared with the TorchScript files
run directly in torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import queue
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from devtools.processes import wait_for
from serve_app.dataplane import RUNTIME_EXTENSIONS, SERVED_EXTENSIONS
from tests.conftest import reference
from tests.e2e.checks import EXAMPLE_MODELS, assert_matches, linear_body, repository_of, runtime_of
from tests.e2e.serve_run import ServeRun

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

BROKEN = "garbage_torchscript"  # in the `control` app's repository: valid config, not TorchScript


class Application(grpcclient.InferenceServerClientPlugin):
    """Serve's `application` metadata on every call of a client (sync and aio alike)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, request: Any) -> None:
        request.headers["application"] = self.name


@pytest.fixture(scope="module")
def served_config(
    served_config: dict[str, Any], example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Beside configs/app.yaml's `triton` app, `control`: model control on, a broken entry added."""
    control_repository = tmp_path_factory.mktemp("serve-grpc") / "control-repository"
    shutil.copytree(example_repository, control_repository)
    shutil.copytree(example_repository / "linear", control_repository / BROKEN)
    (control_repository / BROKEN / "1" / "model.pt").write_bytes(b"not a TorchScript archive\n" * 64)
    control = copy.deepcopy(served_config["applications"][0])
    control.update(name="control", route_prefix="/control")
    control["args"].update(model_repository=str(control_repository), model_control=True)
    return {**served_config, "applications": [*served_config["applications"], control]}


def target(run: ServeRun) -> str:
    return f"127.0.0.1:{run.config['grpc_options']['port']}"


@pytest.fixture(scope="module", autouse=True)
def grpc_ready(served: ServeRun) -> None:
    """HTTP is ready before each app's gRPC backend may be (each is health-checked on its own)."""
    for app in ("triton", "control"):
        wait_ready_over_grpc(served, app)


def wait_ready_over_grpc(run: ServeRun, app: str) -> None:
    with connect(run, app) as client:

        def ready() -> bool:
            with contextlib.suppress(InferenceServerException):
                return client.is_server_ready()
            return False

        wait_for(ready, 120, lambda: f"app {app} ready over gRPC:\n{run.log()}", 0.3)


def connect(run: ServeRun, app: str) -> grpcclient.InferenceServerClient:
    client = grpcclient.InferenceServerClient(target(run))
    client.register_plugin(Application(app))
    return client


@pytest.fixture(scope="module")
def client(served: ServeRun) -> Iterator[grpcclient.InferenceServerClient]:
    with connect(served, "triton") as triton:
        yield triton


@pytest.fixture(scope="module")
def control(served: ServeRun) -> Iterator[grpcclient.InferenceServerClient]:
    with connect(served, "control") as triton:
        yield triton


def infer_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)  # raw_input_contents: tritonclient.grpc's only encoding
    return tensor


def linear_inputs(batch: int = 2) -> tuple[list[grpcclient.InferInput], np.ndarray]:
    _, data = linear_body(batch)
    return [infer_input("input__0", data)], data


def assert_code(raised: pytest.ExceptionInfo[InferenceServerException], code: grpc.StatusCode) -> str:
    assert raised.value.status() == str(code), raised.value
    message = raised.value.message()
    assert message and "Traceback" not in message
    return message


# --- server and model RPCs -----------------------------------------------------------------


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient, served: ServeRun) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    honoured = list(RUNTIME_EXTENSIONS) if runtime_of(served) == "triton" else []
    assert metadata["extensions"] == [*SERVED_EXTENSIONS, *honoured]
    assert metadata["name"] and metadata["version"]


def test_model_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("multi_io", as_json=True)
    assert metadata["name"] == "multi_io" and metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("x", "FP32", ["-1", "-1"]),  # int64 fields are strings in protobuf's JSON
        ("scale", "FP32", ["-1", "1"]),
    ]
    assert client.get_model_metadata("linear", "1").outputs[0].shape == [-1, 4]
    config = client.get_model_config("image_classifier", as_json=True)["config"]
    assert config["name"] == "image_classifier" and config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("input__0", "TYPE_FP32", ["3", "224", "224"])
    ]
    assert "dynamic_batching" in config
    assert (
        client.get_model_config("int_ops", "1").config.output[0].data_type
        == grpcclient.model_config_pb2.TYPE_BOOL
    )


def test_model_ready(client: grpcclient.InferenceServerClient) -> None:
    for model in EXAMPLE_MODELS:
        assert client.is_model_ready(model)
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("linear", "7")


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {row["name"] for row in index} == EXAMPLE_MODELS
    assert all(row["state"] == "READY" and row["version"] == "1" for row in index), index


def test_statistics(client: grpcclient.InferenceServerClient) -> None:
    def linear_stats() -> tuple[int, int]:
        """Samples and successful requests; protobuf's JSON leaves zero fields out."""
        (stats,) = client.get_inference_statistics("linear", as_json=True)["model_stats"]
        success = stats.get("inference_stats", {}).get("success", {})
        return int(stats.get("inference_count", 0)), int(success.get("count", 0))

    samples, requests = linear_stats()
    inputs, _ = linear_inputs()
    for _ in range(3):
        client.infer("linear", inputs)
    assert linear_stats() == (samples + 6, requests + 3)
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} == EXAMPLE_MODELS


# --- inference -----------------------------------------------------------------------------


def test_image_classifier_batch_2(
    client: grpcclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator
) -> None:
    images = rng.random((2, 3, 224, 224), dtype=np.float32)
    result = client.infer(
        "image_classifier",
        [infer_input("input__0", images)],
        outputs=[grpcclient.InferRequestedOutput("output__0")],
        request_id="image-batch-2",
    )
    (expected,) = reference(repository_of(served), "image_classifier", images)
    assert_matches(result.as_numpy("output__0"), expected)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == (
        "image-batch-2",
        "image_classifier",
        "1",
    )
    assert len(response.raw_output_contents) == 1


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_linear_batches(
    client: grpcclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator, batch: int
) -> None:
    data = rng.standard_normal((batch, 16), dtype=np.float32)
    result = client.infer("linear", [infer_input("input__0", data)], model_version="1")
    (expected,) = reference(repository_of(served), "linear", data)
    assert_matches(result.as_numpy("output__0"), expected)


def test_multi_io_and_requested_outputs(
    client: grpcclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((3, 7), dtype=np.float32)
    scale = rng.random((3, 1), dtype=np.float32)
    inputs = [infer_input("x", x), infer_input("scale", scale)]
    scaled, summed = reference(repository_of(served), "multi_io", x, scale)
    every = client.infer("multi_io", inputs)
    assert [o.name for o in every.get_response().outputs] == ["output__0", "output__1"]
    assert_matches(every.as_numpy("output__0"), scaled)
    assert_matches(every.as_numpy("output__1"), summed)
    subset = client.infer("multi_io", inputs, outputs=[grpcclient.InferRequestedOutput("output__1")])
    assert [o.name for o in subset.get_response().outputs] == ["output__1"]
    assert_matches(subset.as_numpy("output__1"), summed)


def test_int_ops(
    client: grpcclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator
) -> None:
    x = rng.integers(-5, 5, size=(2, 3), dtype=np.int32)
    result = client.infer("int_ops", [infer_input("INPUT__0", x)])
    positive, cumsum = reference(repository_of(served), "int_ops", x)
    assert_matches(result.as_numpy("OUTPUT__0"), positive)
    assert_matches(result.as_numpy("OUTPUT__1"), cumsum)
    assert {o.name: o.datatype for o in result.get_response().outputs} == {
        "OUTPUT__0": "BOOL",
        "OUTPUT__1": "INT64",
    }


def test_typed_contents(served: ServeRun) -> None:
    """The generated stub with `contents.fp32_contents` instead of raw bytes; outputs come back raw."""
    data = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    request = service_pb2.ModelInferRequest(model_name="linear", id="typed")
    request.inputs.add(name="input__0", datatype="FP32", shape=[2, 16]).contents.fp32_contents.extend(
        data.ravel().tolist()
    )
    with grpc.insecure_channel(target(served)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, metadata=[("application", "triton")], timeout=60)
    (expected,) = reference(repository_of(served), "linear", data)
    assert response.id == "typed"
    assert_matches(grpcclient.InferResult(response).as_numpy("output__0"), expected)


def test_async_infer(
    client: grpcclient.InferenceServerClient, served: ServeRun, rng: np.random.Generator
) -> None:
    """Several requests in flight at once (they may share batches); each gets its own answer."""
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    expected = {}
    for i in range(12):
        data = rng.standard_normal((1 + i % 3, 16), dtype=np.float32)
        (expected[i],) = reference(repository_of(served), "linear", data)
        client.async_infer(
            "linear",
            [infer_input("input__0", data)],
            callback=lambda result, error, i=i: answers.put((i, result, error)),
            request_id=f"async-{i}",
        )
    for _ in expected:
        i, result, error = answers.get(timeout=120)
        assert error is None, error
        assert result.get_response().id == f"async-{i}"
        assert_matches(result.as_numpy("output__0"), expected[i])


def test_stream_infer(client: grpcclient.InferenceServerClient, served: ServeRun) -> None:
    """ModelStreamInfer: every request answered on the one stream; an error answers only its own."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    inputs, data = linear_inputs(3)
    (expected,) = reference(repository_of(served), "linear", data)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(6):
            client.async_stream_infer("linear", inputs, request_id=f"stream-{i}")
        client.async_stream_infer("no_such_model", inputs, request_id="stream-bad")
        client.async_stream_infer("linear", inputs, request_id="stream-after")
        results = [answers.get(timeout=120) for _ in range(8)]
    finally:
        client.stop_stream()
    errors = [error for _, error in results if error is not None]
    assert len(errors) == 1 and "no_such_model" in errors[0].message()
    ids = sorted(result.get_response().id for result, _ in results if result is not None)
    assert ids == sorted([*(f"stream-{i}" for i in range(6)), "stream-after"])
    for result, _ in results:
        if result is not None:
            assert_matches(result.as_numpy("output__0"), expected)


def test_aio_client(served: ServeRun) -> None:
    inputs, data = linear_inputs(4)
    (expected,) = reference(repository_of(served), "linear", data)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for i in range(4):
            yield {"model_name": "linear", "inputs": inputs, "request_id": f"aio-{i}"}

    async def main() -> None:
        async with aioclient.InferenceServerClient(target(served)) as triton:
            triton.register_plugin(Application("triton"))
            assert await triton.is_server_ready()
            assert (await triton.get_model_metadata("linear")).name == "linear"
            results = await asyncio.gather(*(triton.infer("linear", inputs) for _ in range(4)))
            for result in results:
                assert_matches(result.as_numpy("output__0"), expected)
            streamed = [answer async for answer in triton.stream_infer(requests())]
            assert sorted(result.get_response().id for result, _ in streamed) == [
                f"aio-{i}" for i in range(4)
            ]
            assert all(error is None for _, error in streamed)
            with pytest.raises(InferenceServerException) as raised:
                await triton.infer("no_such_model", inputs)
            assert_code(raised, grpc.StatusCode.NOT_FOUND)

    asyncio.run(main())


# --- model control and error codes ---------------------------------------------------------


def test_load_and_unload(control: grpcclient.InferenceServerClient, served: ServeRun) -> None:
    index = {row.name: row for row in control.get_model_repository_index().models}
    assert index[BROKEN].state == "UNAVAILABLE" and index[BROKEN].reason
    control.unload_model("linear")
    assert not control.is_model_ready("linear")
    control.load_model("linear")
    assert control.is_model_ready("linear")
    inputs, data = linear_inputs()
    (expected,) = reference(repository_of(served), "linear", data)
    assert_matches(control.infer("linear", inputs).as_numpy("output__0"), expected)


ERRORS = [
    # id, app, call on a client, the code
    pytest.param(
        "triton", lambda c: c.infer("no_such_model", linear_inputs()[0]), "NOT_FOUND", id="unknown-model"
    ),
    pytest.param(
        "triton", lambda c: c.infer("linear", linear_inputs()[0], "7"), "NOT_FOUND", id="unknown-version"
    ),
    pytest.param(
        "triton",
        lambda c: c.infer("linear", [infer_input("input__0", np.zeros((2, 15), np.float32))]),
        "INVALID_ARGUMENT",
        id="bad-shape",
    ),
    pytest.param(
        "triton",
        lambda c: c.infer("multi_io", [infer_input("x", np.zeros((2, 3), np.float32))]),
        "INVALID_ARGUMENT",
        id="missing-input",
    ),
    pytest.param("control", lambda c: c.infer(BROKEN, linear_inputs()[0]), "UNAVAILABLE", id="broken-model"),
    pytest.param("triton", lambda c: c.load_model("linear"), "UNAVAILABLE", id="load-control-off"),
    pytest.param("triton", lambda c: c.unload_model("linear"), "UNAVAILABLE", id="unload-control-off"),
    pytest.param(
        "triton", lambda c: c.get_model_metadata("no_such_model"), "NOT_FOUND", id="metadata-unknown"
    ),
    pytest.param(
        "triton",
        lambda c: c.get_system_shared_memory_status(),
        "UNIMPLEMENTED",
        id="shared-memory-unsupported",
    ),
]


@pytest.mark.parametrize(("app", "call", "code"), ERRORS)
def test_error_codes(
    client: grpcclient.InferenceServerClient,
    control: grpcclient.InferenceServerClient,
    app: str,
    call: Any,
    code: str,
) -> None:
    triton = {"triton": client, "control": control}[app]
    with pytest.raises(InferenceServerException) as raised:
        call(triton)
    print(f"{code}: {assert_code(raised, grpc.StatusCode[code])}")
    assert triton.is_model_ready("linear")  # still serving


def test_two_applications_need_application_metadata(served: ServeRun) -> None:
    """Without it HAProxy cannot choose between the apps (one app needs none: configs/app.yaml)."""
    with (
        grpcclient.InferenceServerClient(target(served)) as anonymous,
        pytest.raises(InferenceServerException) as raised,
    ):
        anonymous.is_server_ready()
    assert "Application metadata not set" in assert_code(raised, grpc.StatusCode.NOT_FOUND)
