"""A repository with broken entries, and a small request limit, over a real `serve run`.

Serve runs one app set per Ray cluster, so this module's `serve run` (on the session
cluster) replaces no other: pytest finishes a module's `served` before the next module.
Broken entries are UNAVAILABLE with a reason and answer 503; the good model serves
beside them. Request bodies over `args.max_request_bytes` get 413.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.conftest import reference
from tests.e2e.checks import assert_error, assert_matches, assert_still_serving, linear_body
from tests.e2e.serve_run import app_config, fixed_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

LIMIT = 2**20  # args.max_request_bytes for this module's app

LINEAR_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

GOOD_FILE = b"<linear's model.pt>"

# name → (config.pbtxt, contents of 1/model.pt, or None for no file)
BROKEN: dict[str, tuple[str, bytes | None]] = {
    # config.pbtxt that does not parse (the model file itself is fine)
    "bad_config": (
        'platform: "pytorch_libtorch"\nmax_batch_size: 8\ninput [ { name: "input__0" dims: [ 16 ',
        GOOD_FILE,
    ),
    # valid config, version directory without its model file
    "missing_model_file": (LINEAR_CONFIG, None),
    # valid config, model.pt that is not a TorchScript archive
    "garbage_torchscript": (LINEAR_CONFIG, b"this is not a TorchScript archive\n" * 64),
}


@pytest.fixture(scope="module")
def broken_repository(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example `linear` model plus the BROKEN entries."""
    repository = tmp_path_factory.mktemp("broken") / "repository"
    shutil.copytree(example_repository / "linear", repository / "linear")
    good_file = (example_repository / "linear" / "1" / "model.pt").read_bytes()
    for name, (config, model_file) in BROKEN.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(config)
        if model_file is not None:
            (repository / name / "1" / "model.pt").write_bytes(
                good_file if model_file == GOOD_FILE else model_file
            )
    return repository


@pytest.fixture(scope="module")
def served_config(runtime: str, broken_repository: Path) -> dict[str, Any]:
    args = {"model_repository": str(broken_repository), "runtime": runtime, "max_request_bytes": LIMIT}
    return app_config(args, fixed_replicas(1))


def test_index_shows_broken_entries_unavailable(http: httpx.Client) -> None:
    response = http.post("/v2/repository/index", json={})
    assert response.status_code == 200, response.text
    rows = {row["name"]: row for row in response.json()}
    assert set(rows) == {"linear", *BROKEN}
    assert rows["linear"]["state"] == "READY"
    assert rows["linear"]["version"] == "1"
    for name in BROKEN:
        print(f"{name}: {rows[name]['reason']}")
        assert rows[name]["state"] == "UNAVAILABLE", rows[name]
        assert rows[name]["reason"].strip(), rows[name]
    ready_only = http.post("/v2/repository/index", json={"ready": True})
    assert [row["name"] for row in ready_only.json()] == ["linear"]


@pytest.mark.parametrize("model", sorted(BROKEN))
def test_broken_model_is_503(
    http: httpx.Client, client: httpclient.InferenceServerClient, broken_repository: Path, model: str
) -> None:
    body, _ = linear_body()
    message = assert_error(http.post(f"/v2/models/{model}/infer", json=body), 503)
    print(f"503 {model}: {message}")
    assert model in message
    assert not client.is_model_ready(model)
    assert client.is_model_ready("linear")
    assert client.is_server_ready()
    assert_still_serving(http, broken_repository)


def test_good_model_serves_beside_broken_ones(
    client: httpclient.InferenceServerClient, broken_repository: Path
) -> None:
    data = np.random.default_rng(7).standard_normal((3, 16), dtype=np.float32)
    tensor = httpclient.InferInput("input__0", [3, 16], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("linear", [tensor])
    (expected,) = reference(broken_repository, "linear", data)
    assert_matches(result.as_numpy("output__0"), expected)


def test_body_over_limit_is_413(http: httpx.Client, broken_repository: Path) -> None:
    """Over args.max_request_bytes: refused by its Content-Length, and when streamed without one."""
    oversize = b" " * (LIMIT + 1)
    message = assert_error(
        http.post("/v2/models/linear/infer", content=oversize, headers={"Content-Type": "application/json"}),
        413,
    )
    print(f"413 (Content-Length): {message}")
    assert_still_serving(http, broken_repository)

    def chunks() -> Iterator[bytes]:
        for _ in range(LIMIT // 2**16 + 2):
            yield b" " * 2**16

    message = assert_error(http.post("/v2/models/linear/infer", content=chunks()), 413)
    print(f"413 (chunked): {message}")
    assert_still_serving(http, broken_repository)


def test_body_under_limit_is_served(http: httpx.Client, broken_repository: Path) -> None:
    """A body just under the limit (JSON padded with whitespace) is accepted."""
    body, data = linear_body()
    encoded = httpx.Request("POST", "/", json=body).content
    padded = encoded + b" " * (LIMIT - len(encoded) - 1)
    response = http.post("/v2/models/linear/infer", content=padded)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    (expected,) = reference(broken_repository, "linear", data)
    assert_matches(np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]), expected)
