"""GRPCIngress, the RPC methods Serve's gRPC ingress calls, over a DataPlane on the torch runtime
of the mixed repository (examples plus broken entries): what each RPC answers, the gRPC code
each error gets on the RayServegRPCContext, and ModelStreamInfer."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from unittest.mock import Mock

import grpc
import numpy as np
import pytest
import torch
from ray.serve.grpc_util import RayServegRPCContext
from tritonclient.grpc import service_pb2 as pb

from serve_app import grpc_api
from serve_app.config import AppArgs
from serve_app.dataplane import DataPlane
from serve_app.grpc_api import GRPCIngress
from serve_app.model_state.replica import DeploymentModels
from serve_app.runtimes.torch.runtime import TorchRuntime

pytestmark = pytest.mark.anyio

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class Ingress(GRPCIngress):
    """What the deployment sets for GRPCIngress."""

    def __init__(self, dataplane: DataPlane, args: AppArgs) -> None:
        self._dataplane = dataplane
        self._args = args


@pytest.fixture
async def make_ingress(mixed_repository: Path) -> AsyncIterator[Callable[..., Ingress]]:
    runtime = TorchRuntime(mixed_repository, torch.device("cpu"), 1)
    await runtime.start()
    models = DeploymentModels.in_process(runtime)
    await models.join()

    def make(model_control: bool = False, max_request_bytes: int = 2**20) -> Ingress:
        dataplane = DataPlane(
            runtime,
            models,
            model_control=model_control,
            placement={"replica": "test"},
        )
        args = AppArgs(model_repository=mixed_repository, max_request_bytes=max_request_bytes)
        return Ingress(dataplane, args)

    yield make
    await models.stop()
    await runtime.stop()


@pytest.fixture
def ingress(make_ingress: Callable[..., Ingress]) -> Ingress:
    return make_ingress()


def context() -> RayServegRPCContext:
    """What Serve passes as grpc_context, over a servicer context with nothing set."""
    return RayServegRPCContext(
        Mock(
            **{
                "code.return_value": None,
                "details.return_value": None,
                "invocation_metadata.return_value": [],
                "trailing_metadata.return_value": [],
            }
        )
    )


def linear_request(batch: int = 2, width: int = 16, **fields: object) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="linear", **fields)
    message.inputs.add(name="input__0", datatype="FP32", shape=[batch, width])
    message.raw_input_contents.append(np.ones((batch, width), np.float32).tobytes())
    return message


async def call(ingress: Ingress, rpc: str, message: object) -> tuple[object, grpc.StatusCode | None, str]:
    grpc_context = context()
    response = await getattr(ingress, rpc)(message, grpc_context)
    return response, grpc_context.code(), grpc_context.details()


def test_every_rpc_is_a_method_serve_can_call() -> None:
    """Serve calls the method named like the RPC, passing grpc_context only if it is named."""
    for method in SERVICE.methods:
        function = getattr(GRPCIngress, method.name)
        if method.client_streaming:
            assert inspect.isasyncgenfunction(function)
        else:
            assert inspect.iscoroutinefunction(function)
            assert list(inspect.signature(function).parameters) == ["self", "request", "grpc_context"]


async def test_health_and_metadata(ingress: Ingress) -> None:
    assert (await call(ingress, "ServerLive", pb.ServerLiveRequest()))[0] == pb.ServerLiveResponse(live=True)
    assert (await call(ingress, "ServerReady", pb.ServerReadyRequest()))[0].ready
    metadata, code, _ = await call(ingress, "ServerMetadata", pb.ServerMetadataRequest())
    assert code is None and "statistics" in metadata.extensions
    model, _, _ = await call(ingress, "ModelMetadata", pb.ModelMetadataRequest(name="multi_io", version="1"))
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("x", "FP32", [-1, -1]),
        ("scale", "FP32", [-1, 1]),
    ]
    config, _, _ = await call(ingress, "ModelConfig", pb.ModelConfigRequest(name="linear"))
    assert config.config.max_batch_size == 64


async def test_model_ready_is_false_not_an_error(ingress: Ingress) -> None:
    for name, ready in (("linear", True), ("no_such_model", False), ("corrupt_torchscript", False)):
        response, code, _ = await call(ingress, "ModelReady", pb.ModelReadyRequest(name=name))
        assert (response.ready, code) == (ready, None)


async def test_infer_counts_in_statistics_and_index(ingress: Ingress) -> None:
    response, code, _ = await call(ingress, "ModelInfer", linear_request(id="a"))
    assert code is None and response.id == "a" and list(response.outputs[0].shape) == [2, 4]
    stats, _, _ = await call(ingress, "ModelStatistics", pb.ModelStatisticsRequest(name="linear"))
    assert stats.model_stats[0].inference_count == 2
    index, _, _ = await call(ingress, "RepositoryIndex", pb.RepositoryIndexRequest())
    states = {model.name: model.state for model in index.models}
    assert states["linear"] == "READY" and states["corrupt_torchscript"] == "UNAVAILABLE"
    ready, _, _ = await call(ingress, "RepositoryIndex", pb.RepositoryIndexRequest(ready=True))
    assert "corrupt_torchscript" not in {model.name for model in ready.models}


@pytest.mark.parametrize(
    ("rpc", "message", "code", "phrase"),
    [
        ("ModelInfer", linear_request(width=15), "INVALID_ARGUMENT", "unexpected shape"),
        (
            "ModelInfer",
            pb.ModelInferRequest(model_name="no_such_model"),
            "NOT_FOUND",
            "Request for unknown model: 'no_such_model' is not found",
        ),
        (
            "ModelInfer",
            pb.ModelInferRequest(model_name="linear", model_version="wrong_specification"),
            "INVALID_ARGUMENT",
            "failed to get model version from specified version string 'wrong_specification' (details: stol)",
        ),
        ("ModelInfer", linear_request(batch=2**15), "RESOURCE_EXHAUSTED", "byte limit"),
        ("ModelInfer", pb.ModelInferRequest(model_name="corrupt_torchscript"), "UNAVAILABLE", "TorchScript"),
        (
            "ModelMetadata",
            pb.ModelMetadataRequest(name="linear", version="7"),
            "NOT_FOUND",
            "Request for unknown model: 'linear' version 7 is not found",
        ),
        (
            "RepositoryModelLoad",
            pb.RepositoryModelLoadRequest(model_name="linear"),
            "UNAVAILABLE",
            "explicit model load / unload is not allowed if polling is enabled",
        ),
        (
            "RepositoryModelUnload",
            pb.RepositoryModelUnloadRequest(model_name="linear"),
            "UNAVAILABLE",
            "args.model_control",
        ),
        ("SystemSharedMemoryStatus", pb.SystemSharedMemoryStatusRequest(), "UNIMPLEMENTED", "shared-memory"),
        ("TraceSetting", pb.TraceSettingRequest(), "UNIMPLEMENTED", "trace extension"),
    ],
)
async def test_errors_become_grpc_codes(
    ingress: Ingress, rpc: str, message: object, code: str, phrase: str
) -> None:
    response, actual, details = await call(ingress, rpc, message)
    assert actual == grpc.StatusCode[code]
    assert phrase in details
    assert response == type(response)()


async def test_load_with_model_control(make_ingress: Callable[..., Ingress]) -> None:
    ingress = make_ingress(model_control=True)
    _, code, _ = await call(
        ingress, "RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="linear")
    )
    assert code is None
    assert not (await call(ingress, "ModelReady", pb.ModelReadyRequest(name="linear")))[0].ready
    load = pb.RepositoryModelLoadRequest(model_name="linear")
    assert (await call(ingress, "RepositoryModelLoad", load))[1] is None
    assert (await call(ingress, "ModelReady", pb.ModelReadyRequest(name="linear")))[0].ready
    load.parameters["config"].string_param = "{"
    _, code, details = await call(ingress, "RepositoryModelLoad", load)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("failed to load 'linear', failed to poll from model repository: Invalid config")
    override = {
        "platform": "pytorch_libtorch",
        "max_batch_size": 8,
        "input": [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    load.parameters["config"].string_param = json.dumps(override)
    assert (await call(ingress, "RepositoryModelLoad", load))[1] is None
    config, _, _ = await call(ingress, "ModelConfig", pb.ModelConfigRequest(name="linear"))
    assert config.config.max_batch_size == 8 and not config.config.HasField("dynamic_batching")
    del load.parameters["config"]
    assert (await call(ingress, "RepositoryModelLoad", load))[1] is None  # from config.pbtxt again
    config, _, _ = await call(ingress, "ModelConfig", pb.ModelConfigRequest(name="linear"))
    assert config.config.max_batch_size == 64
    _, code, details = await call(
        ingress, "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="wrong_model_name")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("failed to load 'wrong_model_name', failed to poll from model repository")


async def test_unexpected_errors_are_internal_without_their_text(
    ingress: Ingress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingress._dataplane, "server_metadata", Mock(side_effect=RuntimeError("secret")))
    _, code, details = await call(ingress, "ServerMetadata", pb.ServerMetadataRequest())
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details


async def test_stream_answers_every_request_and_errors_do_not_end_it(ingress: Ingress) -> None:
    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        for i in range(6):
            yield linear_request(id=f"ok-{i}") if i != 3 else linear_request(width=3, id="bad")

    answers = [answer async for answer in ingress.ModelStreamInfer(requests())]
    assert sorted(a.infer_response.id for a in answers) == ["bad", *(f"ok-{i}" for i in (0, 1, 2, 4, 5))]
    [error] = [a for a in answers if a.error_message]
    assert error.infer_response.id == "bad" and "unexpected shape" in error.error_message
    assert all(len(a.infer_response.raw_output_contents) == 1 for a in answers if not a.error_message)


async def test_a_stream_whose_answers_are_not_read_is_read_no_further(
    ingress: Ingress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_api, "STREAM_IN_FLIGHT", 2)
    pulled = 0

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        nonlocal pulled
        for i in range(10):
            pulled += 1
            yield linear_request(id=str(i))

    stream = ingress.ModelStreamInfer(requests())
    first = await stream.__anext__()
    await asyncio.sleep(0.5)  # time to pull more, were the stream unbounded
    # Two slots: the answer taken freed one, for one more request (and the next is pulled).
    assert pulled == 4
    rest = [answer async for answer in stream]
    assert sorted(a.infer_response.id for a in [first, *rest]) == sorted(str(i) for i in range(10))
