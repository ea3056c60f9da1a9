"""Starlette routes of the KServe v2 / Triton HTTP API: parse, call the dataplane, render.

Handlers stay thin; errors from below become `{"error": msg}` with the status from
`errors.status_for`, and unexpected exceptions a 500 without a stack trace.

Decoding is CPU work under the GIL: large bodies (and every compressed one, whose size is
unknown until inflated) are decoded, and large JSON responses encoded, on one codec thread,
so the event loop keeps answering health checks and small requests meanwhile. Tiny requests,
the hot path, stay inline.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from serve_app.dataplane import DataPlane
from serve_app.errors import InvalidInputError, PayloadTooLargeError, ServeAppError, status_for
from serve_app.protocol import (
    HEADER_LENGTH,
    Buffer,
    InferResponse,
    Limits,
    ModelControlBody,
    RepositoryIndexBody,
    decode_body,
    decode_request,
    decompress,
    encode_response,
    json_length,
)

logger = logging.getLogger(__name__)

Handler = Callable[[DataPlane, Request], Awaitable[Response]]

# JSON to parse or render above this many bytes goes to the codec thread (~1 ms of work).
OFFLOAD_BYTES = 256 * 2**10
# One thread: JSON codecs hold the GIL, so more would not run in parallel; they would only
# compete with the event loop for it and multiply the memory that parses in flight hold.
_CODEC = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve_app-codec")

_T = TypeVar("_T")


async def _run(offload: bool, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """`function(*args, **kwargs)`, on the codec thread when `offload`, else inline."""
    if not offload:
        return function(*args, **kwargs)
    call = functools.partial(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_CODEC, call)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def _content_length(request: Request, limit: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()):
        raise InvalidInputError(f"Content-Length '{declared[:40]}' is not an integer")
    if int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    return int(declared)


async def read_body(request: Request, limit: int) -> Buffer:
    """The request body in one buffer, refused with 413 as soon as it exceeds `limit` bytes.

    With a Content-Length the chunks go straight into a buffer of that size (np.empty, whose
    pages are committed only as bytes arrive, so a client that declares a large body and
    stalls holds little); without one they accumulate in one growing bytearray. Either way the
    body is held once, never as chunks plus their join.
    """
    declared = _content_length(request, limit)
    if declared is None:
        grown = bytearray()
        async for chunk in request.stream():
            grown += chunk
            if len(grown) > limit:
                raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
        return grown
    body = memoryview(np.empty(declared, np.uint8))
    size = 0
    async for chunk in request.stream():
        end = size + len(chunk)
        if end > declared:
            raise InvalidInputError(f"request body is longer than its Content-Length of {declared}")
        body[size:end] = chunk
        size = end
    if size != declared:
        raise InvalidInputError(f"request body ended after {size} of its Content-Length of {declared} bytes")
    return body


def _version(request: Request) -> str | None:
    return request.path_params.get("version")


async def health_live(dataplane: DataPlane, request: Request) -> Response:
    return json_response({"live": dataplane.live()})


async def health_ready(dataplane: DataPlane, request: Request) -> Response:
    ready = dataplane.ready()
    return json_response({"ready": ready}, 200 if ready else 503)


async def server_metadata(dataplane: DataPlane, request: Request) -> Response:
    return json_response(dataplane.server_metadata())


async def model_metadata(dataplane: DataPlane, request: Request) -> Response:
    return json_response(dataplane.model_metadata(request.path_params["model"], _version(request)))


async def model_ready(dataplane: DataPlane, request: Request) -> Response:
    return json_response(dataplane.model_ready(request.path_params["model"], _version(request)))


async def model_config(dataplane: DataPlane, request: Request) -> Response:
    return json_response(dataplane.model_config(request.path_params["model"], _version(request)))


async def model_stats(dataplane: DataPlane, request: Request) -> Response:
    return json_response(dataplane.statistics(request.path_params.get("model"), _version(request)))


def _json_output_bytes(response: InferResponse) -> int:
    """Tensor bytes to render as JSON: binary outputs are only copied, never formatted."""
    return sum(array.nbytes for requested, array in response.outputs if not requested.binary)


async def infer(dataplane: DataPlane, request: Request) -> Response:
    limits: Limits = request.app.state.limits
    body = await read_body(request, limits.max_bytes)
    encoding = request.headers.get("content-encoding")
    if encoding and encoding != "identity":
        # Rebinding drops the compressed copy before the decode below.
        body = await _run(True, decompress, body, encoding, limits.max_bytes)
    header_length = request.headers.get(HEADER_LENGTH)
    inference = await _run(
        json_length(header_length, len(body)) > OFFLOAD_BYTES,
        decode_request,
        request.path_params["model"],
        _version(request),
        body,
        header_length,
        limits=limits,
    )
    response = await dataplane.infer(inference)
    content, json_size = await _run(_json_output_bytes(response) > OFFLOAD_BYTES, encode_response, response)
    if json_size is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_size)},
    )


_Control = TypeVar("_Control", RepositoryIndexBody, ModelControlBody)


async def _control_body(request: Request, schema: type[_Control], what: str) -> _Control:
    return decode_body(await read_body(request, request.app.state.limits.max_bytes), schema, what)


async def repository_index(dataplane: DataPlane, request: Request) -> Response:
    body = await _control_body(request, RepositoryIndexBody, "repository index request")
    return json_response(dataplane.repository_index(ready_only=body.ready))


async def load_model(dataplane: DataPlane, request: Request) -> Response:
    body = await _control_body(request, ModelControlBody, "load request")
    await dataplane.load(request.path_params["model"], body.parameters or {})
    return json_response({})


async def unload_model(dataplane: DataPlane, request: Request) -> Response:
    # Checked though not forwarded: the runtimes unload a model alone (no unload_dependents).
    await _control_body(request, ModelControlBody, "unload request")
    await dataplane.unload(request.path_params["model"])
    return json_response({})


def _endpoint(dataplane: DataPlane, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Bind a handler to the dataplane and turn every exception into a JSON error."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(dataplane, request)
        except ServeAppError as exc:
            return error_response(str(exc), status_for(exc))
        except ClientDisconnect:
            # The client left mid-body: nobody is there to read a response, nothing is wrong here.
            logger.debug("client disconnected during %s %s", request.method, request.url.path)
            return Response(status_code=400)
        except Exception:
            logger.exception("unexpected error serving %s %s", request.method, request.url.path)
            return error_response("internal server error; see the replica's log", 500)

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(str(exc.detail), exc.status_code)


MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"

ROUTES: list[tuple[str, Handler, str]] = [
    ("/v2/health/live", health_live, "GET"),
    ("/v2/health/ready", health_ready, "GET"),
    ("/v2", server_metadata, "GET"),
    ("/v2/models/stats", model_stats, "GET"),
    ("/v2/repository/index", repository_index, "POST"),
    ("/v2/repository/models/{model}/load", load_model, "POST"),
    ("/v2/repository/models/{model}/unload", unload_model, "POST"),
    *[
        (prefix + suffix, handler, method)
        for prefix in (MODEL, VERSION)
        for suffix, handler, method in (
            ("", model_metadata, "GET"),
            ("/ready", model_ready, "GET"),
            ("/config", model_config, "GET"),
            ("/stats", model_stats, "GET"),
            ("/infer", infer, "POST"),
        )
    ],
]


def build_http_app(dataplane: DataPlane, max_request_bytes: int) -> Starlette:
    app = Starlette(
        routes=[
            Route(path, _endpoint(dataplane, handler), methods=[method]) for path, handler, method in ROUTES
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.limits = Limits(max_bytes=max_request_bytes)
    return app
