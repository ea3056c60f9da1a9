"""Starlette routes of the KServe v2 / Triton HTTP API: parse, call the dataplane, render.

Handlers stay thin; errors from below become `{"error": msg}` with the status from
`errors.status_for`, and unexpected exceptions a 500 without a stack trace.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serve_app.dataplane import DataPlane
from serve_app.errors import InvalidInputError, PayloadTooLargeError, ServeAppError, status_for
from serve_app.protocol import HEADER_LENGTH, decode_request, decompress, encode_response

logger = logging.getLogger(__name__)

Handler = Callable[[DataPlane, Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


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


async def infer(dataplane: DataPlane, request: Request) -> Response:
    limit: int = request.app.state.max_request_bytes
    body = decompress(await read_body(request, limit), request.headers.get("content-encoding"), limit)
    inference = decode_request(
        request.path_params["model"], _version(request), body, request.headers.get(HEADER_LENGTH)
    )
    content, header_length = encode_response(await dataplane.infer(inference))
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


async def _json_object(request: Request) -> dict[str, Any]:
    body = await read_body(request, request.app.state.max_request_bytes)
    if not body.strip():
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"malformed JSON in request body: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInputError("request body must be a JSON object")
    return parsed


async def repository_index(dataplane: DataPlane, request: Request) -> Response:
    body = await _json_object(request)
    return json_response(dataplane.repository_index(ready_only=bool(body.get("ready", False))))


async def load_model(dataplane: DataPlane, request: Request) -> Response:
    body = await _json_object(request)
    await dataplane.load(request.path_params["model"], body.get("parameters") or {})
    return json_response({})


async def unload_model(dataplane: DataPlane, request: Request) -> Response:
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
    app.state.max_request_bytes = max_request_bytes
    return app
