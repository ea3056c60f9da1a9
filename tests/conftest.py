"""Fixtures shared by the unit and HTTP tiers: example repositories, a started TorchRuntime,
and a Starlette TestClient serving one.

Async tests run on anyio's pytest plugin (asyncio backend). The HTTP client starts and
stops its runtime on the TestClient's own event loop (`client.portal`), which is where
Starlette then runs every request.
"""

from __future__ import annotations

import os

# Before Ray is imported anywhere: keep every Ray process the tests start (and the `serve
# run` children, which inherit this) on 127.0.0.1 instead of the machine's eth0 address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import asyncio
import re
import shutil
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    # Starlette's TestClient works on the installed httpx; its nudge towards httpx2 is noise here.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from serve_app.dataplane import DataPlane
from serve_app.examples import build_example_repository
from serve_app.http_api import build_http_app
from serve_app.model_state.replica import DeploymentModels
from serve_app.runtimes.base import Runtime
from serve_app.runtimes.torch.runtime import TorchRuntime
from tests.object_store import S3Server

CPU = torch.device("cpu")

# Entries that must be UNAVAILABLE next to the examples, with a word their reason contains.
BROKEN_ENTRIES: dict[str, tuple[str, str]] = {
    "bad_pbtxt": ('platform: "pytorch_libtorch" max_batch_size: [ oops', "cannot parse"),
    "onnx_model": (
        'platform: "onnxruntime_onnx" max_batch_size: 1\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
        "onnxruntime_onnx",
    ),
    "corrupt_torchscript": (
        'platform: "pytorch_libtorch" max_batch_size: 1\n'
        'input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] } ]',
        "failed to load TorchScript",
    ),
}


# Markers whose tests run only when `-m` names them: a GPU, or GBs of downloads.
OPT_IN_MARKERS = ("gpu_build", "gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect opt-in tests unless the -m expression names their marker (`-m gpu_build`)."""
    named = set(re.findall(r"[\w-]+", config.getoption("markexpr") or ""))
    left_out = [m for m in OPT_IN_MARKERS if m not in named]
    kept, deselected = [], []
    for item in items:
        (deselected if any(item.get_closest_marker(m) for m in left_out) else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def example_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four example models (serve_app.examples); read-only, copy it to change it."""
    path = tmp_path_factory.mktemp("examples")
    build_example_repository(path)
    return path


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (moto) on 127.0.0.1 with authentication on; one per session."""
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mixed_repository(tmp_path_factory: pytest.TempPathFactory, example_repository: Path) -> Path:
    """The examples plus BROKEN_ENTRIES; read-only."""
    path = tmp_path_factory.mktemp("mixed") / "repo"
    shutil.copytree(example_repository, path)
    for name, (config, _) in BROKEN_ENTRIES.items():
        (path / name / "1").mkdir(parents=True)
        (path / name / "config.pbtxt").write_text(config)
        (path / name / "1" / "model.pt").write_bytes(b"not a TorchScript archive")
    return path


@pytest.fixture
def broken_reasons() -> dict[str, str]:
    """Name → a phrase of its UNAVAILABLE reason, for each broken entry of mixed_repository."""
    return {name: reason for name, (_, reason) in BROKEN_ENTRIES.items()}


@pytest.fixture
def repository(tmp_path: Path, example_repository: Path) -> Path:
    """A private, writable copy of the example repository."""
    path = tmp_path / "repo"
    shutil.copytree(example_repository, path)
    return path


def reference(repository: Path, model: str, *inputs: np.ndarray, version: int = 1) -> list[np.ndarray]:
    """The model's outputs computed by plain torch on its TorchScript file (tuple order)."""
    module = torch.jit.load(str(repository / model / str(version) / "model.pt"))
    with torch.inference_mode():
        result = module(*(torch.from_numpy(np.array(a)) for a in inputs))
    results = (result,) if isinstance(result, torch.Tensor) else result
    return [r.numpy() for r in results]


# model → (inputs by name, in forward order; output names in tuple order)
ExampleCases = dict[str, tuple[dict[str, np.ndarray], list[str]]]


def example_cases(rng: np.random.Generator) -> ExampleCases:
    """A request of every example model (serve_app.examples); batched models get several rows."""
    return {
        "image_classifier": ({"input__0": rng.random((2, 3, 224, 224), dtype=np.float32)}, ["output__0"]),
        "multi_io": (
            {
                "x": rng.standard_normal((3, 7), dtype=np.float32),
                "scale": rng.random((3, 1), dtype=np.float32),
            },
            ["output__0", "output__1"],
        ),
        "linear": ({"input__0": rng.standard_normal((5, 16), dtype=np.float32)}, ["output__0"]),
        "int_ops": ({"INPUT__0": rng.integers(-9, 9, (2, 3), dtype=np.int32)}, ["OUTPUT__0", "OUTPUT__1"]),
    }


class Picky(torch.nn.Module):
    """Fails on negative inputs: a fault only one request of a batch triggers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x * 2


# BYTES as Triton's PyTorch backend passes them: 1-D List[str] in, List[str] out.
STRINGS_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT__0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ -1 ] }
]
"""
STRINGS_BATCHED_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "INPUT__0" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]
output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""


class Strings(torch.nn.Module):
    def forward(self, x: list[str]) -> tuple[list[str], torch.Tensor]:
        return [s + "!" for s in x], torch.tensor([len(s) for s in x], dtype=torch.int64)


class Upper(torch.nn.Module):
    def forward(self, x: list[str]) -> list[str]:
        return [s.upper() for s in x]


def add_scripted(repository: Path, name: str, module: torch.nn.Module, config: str) -> None:
    """`module`, scripted, as `<repository>/<name>/1/model.pt` with `config`."""
    (repository / name / "1").mkdir(parents=True)
    torch.jit.script(module).save(str(repository / name / "1" / "model.pt"))
    (repository / name / "config.pbtxt").write_text(config)


def add_string_models(repository: Path) -> None:
    """`strings` (List[str] in: each with "!", and their lengths) and `strings_batched` (upper case)."""
    add_scripted(repository, "strings", Strings(), STRINGS_CONFIG)
    add_scripted(repository, "strings_batched", Upper(), STRINGS_BATCHED_CONFIG)


def add_picky(repository: Path, max_queue_delay_us: int) -> None:
    """`picky` (Picky on rows of 2 FP32, batches of up to 8 gathered for `max_queue_delay_us`)."""
    (repository / "picky" / "1").mkdir(parents=True)
    torch.jit.script(Picky()).save(str(repository / "picky" / "1" / "model.pt"))
    (repository / "picky" / "config.pbtxt").write_text(f"""
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {{ name: "input__0" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "output__0" data_type: TYPE_FP32 dims: [ 2 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}
""")


async def infer_picky(runtime: Runtime, values: list[float]) -> list[Any]:
    """One request of `picky` per value, a row of it, all at once: each one's outputs or error."""
    requests = (
        runtime.infer("picky", "1", {"input__0": np.full((1, 2), v, np.float32)}, ["output__0"])
        for v in values
    )
    return await asyncio.gather(*requests, return_exceptions=True)


@pytest.fixture
def torch_reference() -> Callable[..., list[np.ndarray]]:
    return reference


@pytest.fixture
async def runtime(example_repository: Path) -> AsyncIterator[TorchRuntime]:
    """A started TorchRuntime over the example repository (one torch thread: shared CI cores)."""
    started = TorchRuntime(example_repository, CPU, 1)
    await started.start()
    yield started
    await started.stop()


ServeFactory = Callable[..., tuple[TestClient, TorchRuntime]]


@pytest.fixture
def serve(mixed_repository: Path) -> Iterator[ServeFactory]:
    """`serve(repository=..., model_control=..., max_request_bytes=...)` → (client, runtime).

    The runtime starts on the client's event loop, so its schedulers and the request
    handlers share one loop, as in a Serve replica.
    """
    with ExitStack() as stack:

        def factory(
            repository: Path = mixed_repository,
            model_control: bool = False,
            max_request_bytes: int = 8 * 2**20,
        ) -> tuple[TestClient, TorchRuntime]:
            runtime = TorchRuntime(repository, CPU, 1)
            models = DeploymentModels.in_process(runtime)
            dataplane = DataPlane(runtime, models, model_control=model_control, placement={"replica": "test"})
            client = stack.enter_context(TestClient(build_http_app(dataplane, max_request_bytes)))
            client.portal.call(runtime.start)
            client.portal.call(models.join)
            stack.callback(client.portal.call, runtime.stop)
            stack.callback(client.portal.call, models.stop)
            return client, runtime

        yield factory


@pytest.fixture
def client(serve: ServeFactory) -> TestClient:
    """The app over the mixed repository, model control off, 8 MiB request limit."""
    return serve()[0]


def post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    """The ASGI scope of an HTTP POST to `path`, for tests that drive the app's ASGI callable."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
