"""Triton's gRPC API (`inference.GRPCInferenceService`) as methods of the ingress deployment.

Serve's gRPC ingress (`grpc_options` in configs/app.yaml, registering the service through
`add_servicer_to_server`) calls the deployment method named like the RPC
with the request message and, where the method has a `grpc_context` parameter, a
`RayServegRPCContext`. `GRPCIngress` is those methods, over the same `DataPlane` as `http_api.py`:
decode → dataplane → encode. An error becomes a gRPC status from `errors.grpc_code_for` (set on
the context; the empty message returned with it is never read), and an unexpected exception
INTERNAL without a stack trace, as over HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from ray.serve.grpc_util import RayServegRPCContext, gRPCInputStream
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serve_app.config import AppArgs
from serve_app.dataplane import DataPlane
from serve_app.errors import ModelNotFoundError, ModelNotReadyError, ServeAppError, grpc_code_for
from serve_app.grpc_codec import decode_infer_request, encode_infer_response, parameter_values, to_message
from serve_app.infer_types import Limits

logger = logging.getLogger(__name__)

# Requests of one ModelStreamInfer stream in flight at once (a replica's max_ongoing_requests
# in configs/app.yaml): enough to fill batches; past it, HTTP/2 flow control holds the client.
STREAM_IN_FLIGHT = 64

_Request = TypeVar("_Request", bound=Message)
_Response = TypeVar("_Response", bound=Message)
Handler = Callable[[Any, _Request], Awaitable[_Response]]
Method = Callable[[Any, _Request, RayServegRPCContext], Awaitable[_Response]]


def add_servicer_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """The servicer function configs/app.yaml's `grpc_options` names: tritonclient's, reached
    through this module so that Serve's Python gRPC proxies also load grpc_codec's alias that
    makes the request messages picklable."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


async def _outcome(call: Awaitable[_Response], rpc: str) -> tuple[_Response | None, grpc.StatusCode, str]:
    """The message `call` answers with, or the gRPC code and message its exception becomes."""
    try:
        return await call, grpc.StatusCode.OK, ""
    except ServeAppError as exc:
        return None, grpc.StatusCode[grpc_code_for(exc)], str(exc)
    except Exception:
        logger.exception("unexpected error serving %s", rpc)
        return None, grpc.StatusCode.INTERNAL, "internal server error; see the replica's log"


def _rpc(
    response_type: type[_Response],
) -> Callable[[Handler[_Request, _Response]], Method[_Request, _Response]]:
    """Give a handler the `grpc_context` Serve passes and turn its exceptions into a status."""

    def wrap(handler: Handler[_Request, _Response]) -> Method[_Request, _Response]:
        @functools.wraps(handler)
        async def method(self: Any, request: _Request, grpc_context: RayServegRPCContext) -> _Response:
            response, code, message = await _outcome(handler(self, request), handler.__name__)
            if response is not None:
                return response
            grpc_context.set_code(code)
            grpc_context.set_details(message)
            return response_type()

        # Serve passes grpc_context only to methods whose signature names it; `wraps` would
        # make inspect.signature report the handler's instead.
        del method.__wrapped__  # type: ignore[attr-defined]
        return method

    return wrap


def _unimplemented(feature: str, response_type: type[_Response]) -> Method[Message, _Response]:
    """An RPC of a Triton extension this server does not serve (HTTP: no such route)."""

    async def method(self: Any, request: Message, grpc_context: RayServegRPCContext) -> _Response:
        grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        grpc_context.set_details(f"{feature} is not supported by this server")
        return response_type()

    return method


_SHM = "Triton's system shared-memory extension"
_CUDA_SHM = "Triton's CUDA shared-memory extension"


def _version(version: str) -> str | None:
    return version or None  # "" is the latest, as in the HTTP paths without /versions


class GRPCIngress:
    """Mixed into the ingress deployment, which sets `_dataplane` and `_args` at start."""

    _dataplane: DataPlane
    _args: AppArgs

    @functools.cached_property
    def _grpc_limits(self) -> Limits:
        return Limits(max_bytes=self._args.max_request_bytes)

    @_rpc(pb.ServerLiveResponse)
    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dataplane.live())

    @_rpc(pb.ServerReadyResponse)
    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    @_rpc(pb.ModelReadyResponse)
    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        """Triton answers `ready: false` for a model it does not know, not NOT_FOUND."""
        try:
            self._dataplane.model_ready(request.name, _version(request.version))
        except (ModelNotFoundError, ModelNotReadyError):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc(pb.ServerMetadataResponse)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return to_message(self._dataplane.server_metadata(), pb.ServerMetadataResponse)

    @_rpc(pb.ModelMetadataResponse)
    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        metadata = self._dataplane.model_metadata(request.name, _version(request.version))
        return to_message(metadata, pb.ModelMetadataResponse)

    @_rpc(pb.ModelConfigResponse)
    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        config = self._dataplane.model_config(request.name, _version(request.version))
        return to_message({"config": config}, pb.ModelConfigResponse)

    @_rpc(pb.ModelStatisticsResponse)
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        statistics = await self._dataplane.statistics(request.name or None, _version(request.version))
        return to_message(statistics, pb.ModelStatisticsResponse)

    @_rpc(pb.RepositoryIndexResponse)
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        models = await self._dataplane.repository_index(ready_only=request.ready)
        return to_message({"models": models}, pb.RepositoryIndexResponse)

    @_rpc(pb.RepositoryModelLoadResponse)
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest
    ) -> pb.RepositoryModelLoadResponse:
        await self._dataplane.load(request.model_name, parameter_values(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_rpc(pb.RepositoryModelUnloadResponse)
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        # Its parameters (unload_dependents) are not forwarded, as over HTTP: models unload alone.
        await self._dataplane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_rpc(pb.ModelInferResponse)
    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(
        self, requests: gRPCInputStream[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Bidirectional: each request is answered when its inference completes (so requests in
        flight together share batches; match answers by `id`). An error answers its request with
        `error_message`, as in Triton, and the stream goes on. A request holds one of the
        stream's STREAM_IN_FLIGHT slots until its answer is taken, so a client that sends
        without reading is held back instead of queueing answers here."""
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        reader = asyncio.create_task(self._answer_stream(requests, slots, answers))
        try:
            while (answer := await answers.get()) is not None:
                slots.release()
                yield answer
            await reader  # re-raises whatever ended the stream early
        finally:
            reader.cancel()

    async def _answer_stream(
        self,
        requests: gRPCInputStream[pb.ModelInferRequest],
        slots: asyncio.Semaphore,
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None],
    ) -> None:
        """Start each request's inference as it arrives; None on `answers` once all are answered."""
        in_flight: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            response, _, message = await _outcome(self._infer(request), "ModelStreamInfer")
            if response is None:  # an error ("" otherwise): with the request's id, to match it by
                response = pb.ModelInferResponse(id=request.id)
            answers.put_nowait(pb.ModelStreamInferResponse(error_message=message, infer_response=response))

        try:
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(answer(request))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)
        finally:
            for task in in_flight:
                task.cancel()
            answers.put_nowait(None)

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        inference = decode_infer_request(request, self._grpc_limits)
        return encode_infer_response(await self._dataplane.infer(inference))

    SystemSharedMemoryStatus = _unimplemented(_SHM, pb.SystemSharedMemoryStatusResponse)
    SystemSharedMemoryRegister = _unimplemented(_SHM, pb.SystemSharedMemoryRegisterResponse)
    SystemSharedMemoryUnregister = _unimplemented(_SHM, pb.SystemSharedMemoryUnregisterResponse)
    CudaSharedMemoryStatus = _unimplemented(_CUDA_SHM, pb.CudaSharedMemoryStatusResponse)
    CudaSharedMemoryRegister = _unimplemented(_CUDA_SHM, pb.CudaSharedMemoryRegisterResponse)
    CudaSharedMemoryUnregister = _unimplemented(_CUDA_SHM, pb.CudaSharedMemoryUnregisterResponse)
    TraceSetting = _unimplemented("Triton's trace extension", pb.TraceSettingResponse)
    LogSettings = _unimplemented("Triton's logging extension", pb.LogSettingsResponse)
