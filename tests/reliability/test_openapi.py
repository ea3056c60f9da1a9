"""serve_app/openapi.json describes exactly the routes served, and requests schemathesis generates
from it (valid and invalid, every method) never get a 500, only answers or JSON 4xx errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from serve_app import http_api
from tests.conftest import ServeFactory

DOCUMENT = json.loads((Path(http_api.__file__).parent / "openapi.json").read_text())
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_description_lists_exactly_the_routes() -> None:
    paths = DOCUMENT["paths"].items()
    described = {(path, method.upper()) for path, item in paths for method in item if method != "parameters"}
    assert described == {(path, method) for path, _, method in http_api.ROUTES}


@pytest.fixture
def control_client(serve: ServeFactory) -> TestClient:
    """Model control on, so that load/unload run past their 503."""
    return serve(model_control=True)[0]


@schema.parametrize()
@settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_never_get_a_server_error(
    case: schemathesis.Case, control_client: TestClient
) -> None:
    sent = case.as_transport_kwargs(base_url="http://testserver")
    response = control_client.request(
        sent["method"],
        sent["url"],
        headers=sent["headers"],
        params=sent.get("params"),
        json=sent.get("json"),
        content=sent.get("data"),
    )
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert response.json()["error"], response.text[:500]
