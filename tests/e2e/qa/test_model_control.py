"""The model-control examples qa/L0_http and qa/L0_grpc run against a server in explicit mode:
simple_http_model_control.py and simple_grpc_model_control.py (client r24.10), on the target's
`control` endpoint (its own repository: `simple`, `simple_int8`).

Their first check counts QA's repository (7 and 8 models); here the control repository's count.
The valid override is QA's `{"max_batch_size":"16"}` on top of `simple`'s whole config: QA's
`simple` is a TensorFlow model whose inputs and outputs Triton auto-completes, the PyTorch backend
completes none, so an override of max_batch_size alone leaves a config without inputs.
test.sh's grep of the server log for "Invalid config override" is not ported (a server log line).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tests.e2e.qa import models
from tests.e2e.qa.targets import Target

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# The examples' malformed override (a JSON fragment, not a config).
MALFORMED = '"parameters": {"config": {{"max_batch_size": "16"}}}'


def override(repository: Path) -> str:
    """`simple`'s config as JSON with the examples' `"max_batch_size":"16"`."""
    config = text_format.Parse(
        (repository / "simple" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    fields = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return json.dumps({**fields, "max_batch_size": "16"})


def test_simple_http_model_control(target: Target) -> None:
    """simple_http_model_control.py: load, a malformed override fails to load, a valid override
    changes max_batch_size to 16, unload, and an unknown model fails to load."""
    with target.control.http_client(verbose=True) as client:
        assert len(client.get_model_repository_index()) == models.index_size(target.control_repository)
        client.load_model("simple")
        assert client.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("simple", config=MALFORMED)
        assert "failed to load" in raised.value.message(), raised.value.message()
        client.load_model("simple", config=override(target.control_repository))
        assert client.get_model_config("simple")["max_batch_size"] == 16
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("wrong_model_name")
        assert "failed to load" in raised.value.message(), raised.value.message()


def test_simple_grpc_model_control(target: Target) -> None:
    """simple_grpc_model_control.py: the same steps over gRPC."""
    with target.control.grpc_client(verbose=True) as client:
        assert len(client.get_model_repository_index().models) == models.index_size(target.control_repository)
        client.load_model("simple")
        assert client.is_model_ready("simple"), "FAILED : Load Model"
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("simple", config=MALFORMED)
        assert "failed to load" in raised.value.message(), raised.value.message()
        client.load_model("simple", config=override(target.control_repository))
        assert client.get_model_config("simple").config.max_batch_size == 16
        client.unload_model("simple")
        assert not client.is_model_ready("simple"), "FAILED : Unload Model"
        with pytest.raises(InferenceServerException) as raised:
            client.load_model("wrong_model_name")
        assert "failed to load" in raised.value.message(), raised.value.message()
