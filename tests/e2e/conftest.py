"""One Ray cluster for the whole e2e session; each test module starts `serve run` on it.

The cluster advertises 2 fake GPUs so GPU-pinning tests run on CPU machines;
replicas that do not ask for GPUs never see them. A module's app is `served`: the example
repository on one replica, once per runtime; a module serves something else by overriding
`served_config`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import tritonclient.http as httpclient

from tests.e2e.serve_run import RUNTIMES, ServeRun, app_config, fixed_replicas

FAKE_GPUS = 2


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    context = ray.init(
        num_cpus=4,
        num_gpus=FAKE_GPUS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace="serve_app_tests",
        log_to_driver=False,
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module", params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """The runtime of the module's app: a module that asks for it runs once per runtime."""
    return request.param


@pytest.fixture(scope="module")
def served_config(runtime: str, example_repository: Path) -> dict[str, Any]:
    """The config `served` runs: the example repository on one replica."""
    return app_config({"model_repository": str(example_repository), "runtime": runtime}, fixed_replicas(1))


@pytest.fixture(scope="module")
def served(
    served_config: dict[str, Any], ray_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeRun]:
    """`serve run` of `served_config` on the session cluster, for the module's tests."""
    with ServeRun(served_config, tmp_path_factory.mktemp("serve"), address=ray_address) as run:
        yield run


@pytest.fixture(scope="module")
def client(served: ServeRun) -> Iterator[httpclient.InferenceServerClient]:
    """`tritonclient.http` on the module's `served` app."""
    triton = httpclient.InferenceServerClient(
        url=f"127.0.0.1:{served.port}", concurrency=8, connection_timeout=120.0, network_timeout=300.0
    )
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def http(served: ServeRun) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120.0) as plain:
        yield plain


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
