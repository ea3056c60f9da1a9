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
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from serve_app.bytes_tensors import held_bytes
from serve_app.dataplane import DataPlane
from serve_app.errors import (
    InvalidInputError,
    ModelNotFoundError,
    PayloadTooLargeError,
    ServeAppError,
    status_for,
)
from serve_app.http_codec import (
    HEADER_LENGTH,
    ModelControlBody,
    RepositoryIndexBody,
    decode_body,
    decode_request,
    decompress,
    encode_response,
    json_length,
)
from serve_app.infer_types import Buffer, InferResponse, Limits

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


def _first_headers(request: Request, *names: bytes) -> list[str | None]:
    """The first value of each named header (ASGI names are lowercase), or None.

    One pass over the raw list: Starlette's `Headers` walks it once per lookup.
    """
    values: list[str | None] = [None] * len(names)
    for key, value in request.scope["headers"]:
        if key in names:
            index = names.index(key)
            if values[index] is None:
                values[index] = value.decode("latin-1")
    return values


def _content_length(declared: str | None, limit: int) -> int | None:
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()):
        raise InvalidInputError(f"Content-Length '{declared[:40]}' is not an integer")
    if int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    return int(declared)


async def _next_chunk(request: Request) -> tuple[bytes, bool]:
    """The next piece of the body and whether more follows; a client that left raises ClientDisconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            return message.get("body", b""), message.get("more_body", False)
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()


async def read_body(request: Request, declared: str | None, limit: int) -> Buffer:
    """The request body in one buffer, refused with 413 as soon as it exceeds `limit` bytes.

    `declared` is the Content-Length header. A body that arrives in one message (every small
    one) is that message's bytes, not copied. Otherwise, with a Content-Length the chunks go
    straight into a buffer of that size (np.empty, whose pages are committed only as bytes
    arrive, so a client that declares a large body and stalls holds little); without one they
    accumulate in one growing bytearray. Either way the body is held once, never as chunks plus
    their join.
    """
    length = _content_length(declared, limit)
    chunk, more = await _next_chunk(request)
    if length is None:
        if not more and len(chunk) <= limit:
            return chunk
        grown = bytearray()
        while True:
            grown += chunk
            if len(grown) > limit:
                raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
            if not more:
                return grown
            chunk, more = await _next_chunk(request)
    if not more and len(chunk) == length:
        return chunk
    body = memoryview(np.empty(length, np.uint8))
    size = 0
    while True:
        end = size + len(chunk)
        if end > length:
            raise InvalidInputError(f"request body is longer than its Content-Length of {length}")
        body[size:end] = chunk
        size = end
        if not more:
            break
        chunk, more = await _next_chunk(request)
    if size != length:
        raise InvalidInputError(f"request body ended after {size} of its Content-Length of {length} bytes")
    return body


def _version(request: Request) -> str | None:
    """The path's version; as in Triton, whose version routes take only digits, a path with any
    other version is no route at all (404 "Not Found")."""
    version = request.path_params.get("version")
    if version is not None and not (version.isascii() and version.isdigit()):
        raise ModelNotFoundError("Not Found")
    return version


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
    return json_response(await dataplane.statistics(request.path_params.get("model"), _version(request)))


def _json_output_bytes(response: InferResponse) -> int:
    """Tensor bytes to render as JSON: binary outputs are only copied, never formatted."""
    total = 0
    for requested, array in response.outputs:
        if not requested.binary:
            total += held_bytes(array)
    return total


_HEADER_LENGTH = HEADER_LENGTH.encode()
# On-demand placement: on a response whose request waited for its model's load, the seconds it waited.
MODEL_LOAD_HEADER = b"serve-app-model-load-s"
_INFER_HEADERS = (b"content-length", b"content-encoding", _HEADER_LENGTH)


async def infer(dataplane: DataPlane, request: Request) -> Response:
    limits: Limits = request.app.state.limits
    declared, encoding, header_length = _first_headers(request, *_INFER_HEADERS)
    body = await read_body(request, declared, limits.max_bytes)
    if encoding and encoding != "identity":
        # Rebinding drops the compressed copy before the decode below.
        body = await _run(True, decompress, body, encoding, limits.max_bytes)
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
        answer = Response(content, media_type="application/json")
    else:
        answer = Response(content, media_type="application/octet-stream")
        # Where Starlette puts headers given to it, without it encoding a dict for every response.
        answer.raw_headers.insert(0, (_HEADER_LENGTH, str(json_size).encode()))
    if response.model_load_s:
        answer.raw_headers.append((MODEL_LOAD_HEADER, f"{response.model_load_s:.6f}".encode()))
    return answer


_Control = TypeVar("_Control", RepositoryIndexBody, ModelControlBody)


async def _control_body(request: Request, schema: type[_Control], what: str) -> _Control:
    [declared] = _first_headers(request, b"content-length")
    return decode_body(await read_body(request, declared, request.app.state.limits.max_bytes), schema, what)


async def repository_index(dataplane: DataPlane, request: Request) -> Response:
    body = await _control_body(request, RepositoryIndexBody, "repository index request")
    return json_response(await dataplane.repository_index(ready_only=body.ready))


async def load_model(dataplane: DataPlane, request: Request) -> Response:
    body = await _control_body(request, ModelControlBody, "load request")
    await dataplane.load(request.path_params["model"], body.parameters or {})
    return json_response({})


async def unload_model(dataplane: DataPlane, request: Request) -> Response:
    # Checked though not forwarded: the runtimes unload a model alone (no unload_dependents).
    await _control_body(request, ModelControlBody, "unload request")
    await dataplane.unload(request.path_params["model"])
    return json_response({})


class _Endpoint:
    """A handler bound to the dataplane, as an ASGI app that turns every exception into a JSON error.

    An ASGI app rather than a function: Starlette wraps a function endpoint in a second Request
    and an exception-handling layer on every request, and these handlers raise nothing it handles.
    """

    def __init__(self, dataplane: DataPlane, handler: Handler) -> None:
        self._dataplane = dataplane
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self._handler(self._dataplane, request)
        except ServeAppError as exc:
            response = error_response(str(exc), status_for(exc))
        except ClientDisconnect:
            # The client left mid-body: nobody is there to read a response, nothing is wrong here.
            logger.debug("client disconnected during %s %s", request.method, request.url.path)
            response = Response(status_code=400)
        except Exception:
            logger.exception("unexpected error serving %s %s", request.method, request.url.path)
            response = error_response("internal server error; see the replica's log", 500)
        await response(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(str(exc.detail), exc.status_code)


MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"

# The infer routes first: Starlette's router, and Serve's naming of each request's route for
# its metrics, try the routes in order. No other route's pattern matches an infer path, so the
# order picks the same route for every request.
ROUTES: list[tuple[str, Handler, str]] = [
    (MODEL + "/infer", infer, "POST"),
    (VERSION + "/infer", infer, "POST"),
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
        )
    ],
]


class _App(Starlette):
    """Starlette, with a request to an infer route handed to it before the middleware and router.

    Both are a noticeable share of a tiny request: the router matches the path against route after
    route, and each middleware layer wraps `send`. Matching the infer routes first picks the route the
    router would (see ROUTES). Of the middleware only ServerErrorMiddleware can act on them (the
    endpoints raise nothing ExceptionMiddleware handles), so it wraps them here as well; the
    scope gets the keys Starlette's routing sets.
    """

    def __init__(self, hot: list[Route], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hot = [(route, ServerErrorMiddleware(route.app, debug=self.debug)) for route in hot]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for route, app in self._hot:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["app"] = self
                scope.setdefault("router", self.router)
                scope["route"] = route
                scope.update(child_scope)
                await app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def build_http_app(dataplane: DataPlane, max_request_bytes: int) -> Starlette:
    routes = [
        Route(path, _Endpoint(dataplane, handler), methods=[method], name=handler.__name__)
        for path, handler, method in ROUTES
    ]
    app = _App(
        [route for route, (_, handler, _) in zip(routes, ROUTES, strict=True) if handler is infer],
        routes=routes,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.limits = Limits(max_bytes=max_request_bytes)
    return app
