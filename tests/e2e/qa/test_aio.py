"""qa/L0_http/python_http_aio_test.py (TestHttpAioClient) and qa/L0_grpc/python_grpc_aio_test.py
(TestGrpcAioClient), r24.10: the asyncio clients against a server whose model control is off.

Their repository-index tests count the rows of QA's own repository (7 and 8); here the count is
that of this package's repository (`models.index_size`). The trace-settings and shared-memory
tests of both files are not ported (features serve_app does not claim).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from tests.e2e.qa import models
from tests.e2e.qa.targets import Endpoint, Target

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"


def _http(server: Endpoint, call: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        client = server.http_aio_client()
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(run())


def _grpc(server: Endpoint, call: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        client = server.grpc_aio_client()
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(run())


# --- python_http_aio_test.py TestHttpAioClient -------------------------------------------------


def test_http_is_server_live(server: Endpoint) -> None:
    """TestHttpAioClient.test_is_server_live."""
    assert _http(server, lambda c: c.is_server_live()) is True


def test_http_is_server_ready(server: Endpoint) -> None:
    """TestHttpAioClient.test_is_server_ready."""
    assert _http(server, lambda c: c.is_server_ready()) is True


def test_http_is_model_ready(server: Endpoint) -> None:
    """TestHttpAioClient.test_is_model_ready."""
    assert _http(server, lambda c: c.is_model_ready("simple")) is True


def test_http_get_server_metadata(server: Endpoint) -> None:
    """TestHttpAioClient.test_get_server_metadata."""
    assert _http(server, lambda c: c.get_server_metadata())["name"] == "triton"


def test_http_get_model_metadata(server: Endpoint) -> None:
    """TestHttpAioClient.test_get_model_metadata."""
    assert _http(server, lambda c: c.get_model_metadata("simple"))["name"] == "simple"


def test_http_get_model_config(server: Endpoint) -> None:
    """TestHttpAioClient.test_get_model_config."""
    assert _http(server, lambda c: c.get_model_config("simple"))["name"] == "simple"


def test_http_get_model_repository_index(target: Target) -> None:
    """TestHttpAioClient.test_get_model_repository_index."""
    index = _http(target.main, lambda c: c.get_model_repository_index())
    assert len(index) == models.index_size(target.repository)


def test_http_load_model(server: Endpoint) -> None:
    """TestHttpAioClient.test_load_model and .test_unload_model (the same call: load_model)."""
    with pytest.raises(InferenceServerException, match=NOT_ALLOWED):
        _http(server, lambda c: c.load_model("simple"))


def test_http_get_inference_statistics(server: Endpoint) -> None:
    """TestHttpAioClient.test_get_inference_statistics."""
    _http(server, lambda c: c.get_inference_statistics())


# --- python_grpc_aio_test.py TestGrpcAioClient -------------------------------------------------


def test_grpc_is_server_live(server: Endpoint) -> None:
    """TestGrpcAioClient.test_is_server_live."""
    assert _grpc(server, lambda c: c.is_server_live()) is True


def test_grpc_is_server_ready(server: Endpoint) -> None:
    """TestGrpcAioClient.test_is_server_ready."""
    assert _grpc(server, lambda c: c.is_server_ready()) is True


def test_grpc_is_model_ready(server: Endpoint) -> None:
    """TestGrpcAioClient.test_is_model_ready."""
    assert _grpc(server, lambda c: c.is_model_ready("simple")) is True


def test_grpc_get_server_metadata(server: Endpoint) -> None:
    """TestGrpcAioClient.test_get_server_metadata."""
    assert _grpc(server, lambda c: c.get_server_metadata()).name == "triton"
    assert _grpc(server, lambda c: c.get_server_metadata(as_json=True))["name"] == "triton"


def test_grpc_get_model_metadata(server: Endpoint) -> None:
    """TestGrpcAioClient.test_get_model_metadata."""
    assert _grpc(server, lambda c: c.get_model_metadata("simple")).name == "simple"


def test_grpc_get_model_config(server: Endpoint) -> None:
    """TestGrpcAioClient.test_get_model_config."""
    assert _grpc(server, lambda c: c.get_model_config("simple")).config.name == "simple"


def test_grpc_get_model_repository_index(target: Target) -> None:
    """TestGrpcAioClient.test_get_model_repository_index."""
    index = _grpc(target.main, lambda c: c.get_model_repository_index())
    assert len(index.models) == models.index_size(target.repository)


def test_grpc_load_model(server: Endpoint) -> None:
    """TestGrpcAioClient.test_load_model and .test_unload_model (the same call: load_model)."""
    with pytest.raises(InferenceServerException, match=r"\[StatusCode\.UNAVAILABLE\] " + NOT_ALLOWED):
        _grpc(server, lambda c: c.load_model("simple"))


def test_grpc_get_inference_statistics(server: Endpoint) -> None:
    """TestGrpcAioClient.test_get_inference_statistics."""
    _grpc(server, lambda c: c.get_inference_statistics())
