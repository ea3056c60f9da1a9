"""One Ray cluster for the whole e2e session; each test module starts `serve run` on it.

The cluster advertises 2 fake GPUs so GPU-pinning tests run on CPU machines;
replicas that do not ask for GPUs never see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
import tritonclient.http as httpclient

from tests.e2e.harness import RUNTIMES, ServeRun, app_config, free_port

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


@pytest.fixture(scope="session")
def example_repository_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from serve_app.examples import build_example_repository

    path = tmp_path_factory.mktemp("repository")
    build_example_repository(path)
    return path


@pytest.fixture(scope="module", params=RUNTIMES)
def served(
    request: pytest.FixtureRequest,
    ray_address: str,
    example_repository_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeRun]:
    """The app serving the example repository with the parametrised runtime."""
    workdir = tmp_path_factory.mktemp("serve")
    config = app_config(
        free_port(),
        args={"model_repository": str(example_repository_path), "runtime": request.param},
        deployment={"autoscaling_config": None, "num_replicas": 1},
    )
    run = ServeRun(config, workdir, address=ray_address).start()
    yield run
    run.stop()


@pytest.fixture(scope="module")
def client(served: ServeRun) -> Iterator[httpclient.InferenceServerClient]:
    """`tritonclient.http` on the module's `served` app (a module may serve another repository)."""
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
