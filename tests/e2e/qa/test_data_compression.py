"""qa/L0_data_compression/test.sh (r24.10), "End-to-end testing with simple model": the Python
HTTP examples with every pair of different request and response compressions.

The C++ data-compressor unit test and the C++ client of that script are not ported.
"""

from __future__ import annotations

import itertools

import pytest

from tests.e2e.qa import examples
from tests.e2e.qa.targets import Endpoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ALGORITHMS = ["deflate", "gzip", ""]
# test.sh skips the pairs where both are the same (including neither).
PAIRS = [
    (request, response)
    for request, response in itertools.product(ALGORITHMS, ALGORITHMS)
    if request != response
]
CLIENTS = {
    "simple_http_infer_client": examples.http_infer_client,
    "simple_http_aio_infer_client": examples.http_aio_infer_client,
}


@pytest.mark.parametrize(
    ("request_algorithm", "response_algorithm"), PAIRS, ids=[f"{a or 'none'}-{b or 'none'}" for a, b in PAIRS]
)
@pytest.mark.parametrize("client", list(CLIENTS))
def test_compression(server: Endpoint, client: str, request_algorithm: str, response_algorithm: str) -> None:
    """`<client>.py -v --request-compression-algorithm <a> --response-compression-algorithm <b>`
    (an empty algorithm: the option not given) exits 0."""
    CLIENTS[client](
        server,
        request_compression=request_algorithm or None,
        response_compression=response_algorithm or None,
    )
