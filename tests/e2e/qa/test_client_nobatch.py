"""qa/L0_client_nobatch/client_test.py (r24.10), ClientNoBatchTest, on `libtorch_int32_int8_int8`
and `libtorch_nobatch_int32_int8_int8` (QA: the graphdef ones), over HTTP and gRPC.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.qa.models import model_name
from tests.e2e.qa.targets import Endpoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

INPUT_SIZE = 16


def _infer(
    server: Endpoint, rng: np.random.Generator, protocol: str, prefix: str, shape: tuple[int, ...]
) -> Any:
    """INT32 inputs of `shape` to `<prefix>_int32_int8_int8`, both outputs requested."""
    module: Any = httpclient if protocol == "http" else grpcclient
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = module.InferInput(name, list(shape), "INT32")
        tensor.set_data_from_numpy(rng.integers(0, 100, size=shape, dtype=np.int32))
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput(name) for name in ("OUTPUT__0", "OUTPUT__1")]
    client = server.http_client(verbose=True) if protocol == "http" else server.grpc_client(verbose=True)
    with client:
        return client.infer(model_name(prefix, np.int32, np.int8, np.int8), inputs, outputs=outputs)


PROTOCOLS = ["http", "grpc"]


def test_nobatch_request_for_batching_model(server: Endpoint, rng: np.random.Generator) -> None:
    """ClientNoBatchTest.test_nobatch_request_for_batching_model: a shape without the batch
    dimension fails."""
    for protocol in PROTOCOLS:
        with pytest.raises(InferenceServerException):
            _infer(server, rng, protocol, "libtorch", (INPUT_SIZE,))


def test_batch_request_for_nobatching_model(server: Endpoint, rng: np.random.Generator) -> None:
    """ClientNoBatchTest.test_batch_request_for_nobatching_model: a batch dimension fails."""
    for protocol in PROTOCOLS:
        with pytest.raises(InferenceServerException):
            _infer(server, rng, protocol, "libtorch_nobatch", (1, INPUT_SIZE))


def test_nobatch_request_for_nonbatching_model(server: Endpoint, rng: np.random.Generator) -> None:
    """ClientNoBatchTest.test_nobatch_request_for_nonbatching_model."""
    for protocol in PROTOCOLS:
        _infer(server, rng, protocol, "libtorch_nobatch", (INPUT_SIZE,))


def test_batch_request_for_batching_model(server: Endpoint, rng: np.random.Generator) -> None:
    """ClientNoBatchTest.test_batch_request_for_batching_model."""
    for protocol in PROTOCOLS:
        _infer(server, rng, protocol, "libtorch", (1, INPUT_SIZE))
