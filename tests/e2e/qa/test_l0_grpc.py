"""qa/L0_grpc (r24.10) test.sh: the Python gRPC client examples it runs (`-v`; the sequence ones
also without `-d`), and its compression step (`simple_grpc_infer_client.py -v -C deflate` with
GRPC_TRACE=compression).

The examples' models are this package's TorchScript ones; grpc_client.py's `inception_graphdef`
is `inception_libtorch`, a stand-in with the same inputs and outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.e2e.qa import examples
from tests.e2e.qa.targets import Endpoint, Target, unavailable_on_torch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXAMPLES: dict[str, Callable[[Endpoint], None]] = {
    "simple_grpc_health_metadata": examples.grpc_health_metadata,
    "simple_grpc_aio_infer_client": examples.grpc_aio_infer_client,
    "simple_grpc_infer_client": examples.grpc_infer_client,
    "simple_grpc_async_infer_client": examples.grpc_async_infer_client,
    "simple_grpc_string_infer_client": examples.grpc_string_infer_client,
    "simple_grpc_keepalive_client": examples.grpc_keepalive_client,
    "simple_grpc_custom_args_client": examples.grpc_custom_args_client,
    "grpc_explicit_byte_content_client": examples.grpc_explicit_byte_content_client,
    "grpc_explicit_int_content_client": examples.grpc_explicit_int_content_client,
    "grpc_explicit_int8_content_client": examples.grpc_explicit_int8_content_client,
    "grpc_client": examples.grpc_client,
    "simple_grpc_aio_sequence_stream_infer_client": examples.grpc_aio_sequence_stream_infer_client,
    "simple_grpc_sequence_stream_infer_client": examples.grpc_sequence_stream_infer_client,
    "simple_grpc_sequence_sync_infer_client": examples.grpc_sequence_sync_infer_client,
}


# The examples' models that a target may refuse by design (targets.TORCH_UNAVAILABLE).
SEQUENCE_EXAMPLES = {
    name: "simple_sequence"
    for name in (
        "simple_grpc_aio_sequence_stream_infer_client",
        "simple_grpc_sequence_stream_infer_client",
        "simple_grpc_sequence_sync_infer_client",
    )
}


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_example(target: Target, example: str) -> None:
    """test.sh's loop over the Python examples: `python <example>.py -v` exits 0 (its PASS line);
    on runtime: torch the sequence examples get simple_sequence's UNAVAILABLE instead, by design."""
    with unavailable_on_torch(target, SEQUENCE_EXAMPLES.get(example)):
        EXAMPLES[example](target.main)


# The client side of `-C deflate`, in a process of its own: gRPC reads GRPC_TRACE when it starts.
COMPRESSED_CLIENT = """
import json, sys
from tests.e2e.qa.examples import grpc_infer_client
from tests.e2e.qa.targets import Endpoint, Target, unavailable_on_torch
grpc_infer_client(Endpoint(**json.loads(sys.argv[1])), compression_algorithm="deflate")
"""


def test_simple_grpc_infer_client_deflate(server: Endpoint) -> None:
    """test.sh: `simple_grpc_infer_client.py -v -C deflate` succeeds and gRPC's compression trace
    shows the request compressed ("Compressed[deflate]")."""
    endpoint = json.dumps({"http": server.http, "grpc": server.grpc, "grpc_headers": server.grpc_headers})
    env = {**os.environ, "GRPC_TRACE": "compression,channel", "GRPC_VERBOSITY": "DEBUG"}
    completed = subprocess.run(
        [sys.executable, "-c", COMPRESSED_CLIENT, endpoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-4000:]
    assert "Compressed[deflate]" in log, log[-4000:]
