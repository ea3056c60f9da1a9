"""TorchRuntime over temporary repositories: correctness vs. plain torch, broken entries, load/unload."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from torch import nn

from serve_app.errors import InternalError, InvalidInputError, ModelNotFoundError, ModelNotReadyError
from serve_app.examples import write_model
from serve_app.runtimes.base import ModelState
from serve_app.runtimes.torch import runtime as torch_runtime
from serve_app.runtimes.torch.runtime import TorchRuntime
from serve_app.runtimes.torch.statistics import ModelStatistics
from serve_app.runtimes.torch.torchscript import Timings, TorchScriptModel
from tests.conftest import add_picky, example_cases, infer_picky

pytestmark = pytest.mark.anyio

CPU = torch.device("cpu")
Reference = Callable[..., list[np.ndarray]]
RNG = np.random.default_rng(0)

CASES = example_cases(RNG)


@pytest.mark.parametrize("model", sorted(CASES))
async def test_outputs_equal_direct_torch(
    runtime: TorchRuntime, example_repository: Path, torch_reference: Reference, model: str
) -> None:
    inputs, output_names = CASES[model]
    outputs = await runtime.infer(model, "1", inputs, output_names)
    assert list(outputs) == output_names
    expected = torch_reference(example_repository, model, *inputs.values())
    signature = runtime.signature(model, "1")
    for spec, name, want in zip(signature.outputs, output_names, expected, strict=True):
        assert spec.name == name
        assert outputs[name].shape == want.shape
        assert outputs[name].dtype == want.dtype
        np.testing.assert_allclose(outputs[name], want, rtol=0, atol=1e-6)


async def test_only_the_requested_outputs_are_returned(runtime: TorchRuntime) -> None:
    inputs, _ = CASES["multi_io"]
    outputs = await runtime.infer("multi_io", "1", inputs, ["output__1"])
    assert list(outputs) == ["output__1"]
    np.testing.assert_allclose(outputs["output__1"], inputs["x"].sum(axis=1, keepdims=True), atol=1e-6)


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    runtime: TorchRuntime, example_repository: Path, torch_reference: Reference
) -> None:
    rows = [RNG.standard_normal((1 + i % 3, 16), dtype=np.float32) for i in range(12)]
    with anyio.fail_after(10):
        results = await asyncio.gather(
            *(runtime.infer("linear", "1", {"input__0": r}, ["output__0"]) for r in rows)
        )
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_allclose(
            result["output__0"], torch_reference(example_repository, "linear", row)[0], atol=1e-6
        )
    [stats] = runtime.statistics("linear", None)["model_stats"]
    assert stats["inference_count"] == sum(len(r) for r in rows)
    assert stats["execution_count"] < len(rows)
    assert stats["inference_stats"]["success"]["count"] == len(rows)


async def test_metadata_config_and_index(runtime: TorchRuntime) -> None:
    assert runtime.healthy() and runtime.device() == "cpu"
    assert runtime.index() == [
        ModelState(name, "1", "READY") for name in ("image_classifier", "int_ops", "linear", "multi_io")
    ]
    assert runtime.metadata("multi_io", None) == {
        "name": "multi_io",
        "versions": ["1"],
        "platform": "pytorch_libtorch",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "scale", "datatype": "FP32", "shape": [-1, 1]},
        ],
        "outputs": [
            {"name": "output__0", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "output__1", "datatype": "FP32", "shape": [-1, 1]},
        ],
    }
    config = runtime.config("image_classifier", "1")
    assert config["max_batch_size"] == 8 and config["platform"] == "pytorch_libtorch"
    assert config["dynamic_batching"] == {}
    assert runtime.resolve("linear", None) == "1"
    assert runtime.resolve("linear", "01") == "1"
    assert runtime.statistics("linear", "01")["model_stats"][0]["version"] == "1"
    assert runtime.resolve("linear", " 1abc") == "1"  # std::stol, as Triton reads a version
    for version in ("2", "0"):
        with pytest.raises(
            ModelNotFoundError, match=f"^Request for unknown model: 'linear' version {version} is not"
        ):
            runtime.resolve("linear", version)
    for version in ("latest", "²", ""):
        with pytest.raises(InvalidInputError, match=f"version string '{version}' \\(details: stol\\)"):
            runtime.resolve("linear", version)
    with pytest.raises(InvalidInputError, match=r"^invalid model version specified '-1' , version should be"):
        runtime.resolve("linear", "-1")
    with pytest.raises(ModelNotFoundError, match=r"^Request for unknown model: 'nope' is not found$"):
        runtime.metadata("nope", None)
    stats = runtime.statistics(None, None)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [
        ("image_classifier", "1"),
        ("int_ops", "1"),
        ("linear", "1"),
        ("multi_io", "1"),
    ]


async def test_broken_entries_are_unavailable_with_a_reason_and_the_rest_serve(
    mixed_repository: Path, broken_reasons: dict[str, str]
) -> None:
    runtime = TorchRuntime(mixed_repository, CPU, 1)
    await runtime.start()
    try:
        states = {s.name: s for s in runtime.index()}
        for name, reason in broken_reasons.items():
            assert states[name].state == "UNAVAILABLE" and states[name].version is None
            assert reason in states[name].reason
            with pytest.raises(ModelNotReadyError, match=f"model '{name}' is not ready: .*{reason}"):
                runtime.resolve(name, None)
        assert all(states[name].state == "READY" for name in CASES)
        inputs, names = CASES["linear"]
        assert (await runtime.infer("linear", "1", inputs, names))["output__0"].shape == (5, 4)
        assert [s["name"] for s in runtime.statistics(None, None)["model_stats"]] == sorted(CASES)
    finally:
        await runtime.stop()


async def test_all_versions_serve_and_the_latest_is_the_default(tmp_path: Path) -> None:
    config = """
platform: "pytorch_libtorch"
max_batch_size: 2
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
version_policy: { all: { } }
"""
    write_model(tmp_path, "scaled", Scale(1.0), (torch.ones(1, 1),), config, versions=(1,))
    write_model(tmp_path, "scaled", Scale(2.0), (torch.ones(1, 1),), config, versions=(2,))
    runtime = TorchRuntime(tmp_path, CPU, 1)
    await runtime.start()
    try:
        assert runtime.resolve("scaled", None) == "2"
        assert runtime.metadata("scaled", None)["versions"] == ["1", "2"]
        assert runtime.metadata("scaled", "1")["versions"] == ["1"]
        x = {"input__0": np.array([[3.0]], np.float32)}
        assert (await runtime.infer("scaled", "1", x, ["output__0"]))["output__0"][0, 0] == 3.0
        assert (await runtime.infer("scaled", "2", x, ["output__0"]))["output__0"][0, 0] == 6.0
        assert [s["version"] for s in runtime.statistics("scaled", None)["model_stats"]] == ["1", "2"]
        assert [s["version"] for s in runtime.statistics("scaled", "2")["model_stats"]] == ["2"]
        with pytest.raises(
            ModelNotFoundError, match=r"^Request for unknown model: 'scaled' version 3 is not found"
        ):
            runtime.statistics("scaled", "3")
    finally:
        await runtime.stop()


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


async def test_unload_then_load(repository: Path) -> None:
    runtime = TorchRuntime(repository, CPU, 1)
    await runtime.start()
    try:
        inputs, names = CASES["linear"]
        await runtime.unload("linear")
        assert ModelState("linear", None, "UNAVAILABLE", "unloaded") in runtime.index()
        with pytest.raises(ModelNotReadyError, match="model 'linear' is not ready: unloaded"):
            runtime.resolve("linear", None)
        with pytest.raises(ModelNotReadyError, match="was unloaded"):
            await runtime.infer("linear", "1", inputs, names)
        assert runtime.statistics(None, None)["model_stats"][2]["name"] == "multi_io"

        await runtime.load("linear", {})
        assert ModelState("linear", "1", "READY") in runtime.index()
        assert (await runtime.infer("linear", "1", inputs, names))["output__0"].shape == (5, 4)

        # A reload picks up a new version directory (latest 1 → version 2).
        write_model(
            repository,
            "linear",
            Scale(3.0),
            (torch.ones(1, 16),),
            (repository / "linear" / "config.pbtxt").read_text(),
            versions=(2,),
        )
        await runtime.load("linear", {})
        assert runtime.resolve("linear", None) == "2"
        outputs = await runtime.infer(
            "linear", "2", {"input__0": np.ones((1, 16), np.float32)}, ["output__0"]
        )
        np.testing.assert_array_equal(outputs["output__0"], np.full((1, 16), 3.0, np.float32))
    finally:
        await runtime.stop()


async def test_loading_a_broken_or_missing_model_is_refused(repository: Path) -> None:
    runtime = TorchRuntime(repository, CPU, 1)
    await runtime.start()
    try:
        with pytest.raises(
            InvalidInputError,
            match=r"^failed to load 'nope', failed to poll from model repository: no directory 'nope'",
        ):
            await runtime.load("nope", {})
        (repository / "linear" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"')
        with pytest.raises(ModelNotReadyError, match=r"failed to load 'linear': .*onnxruntime_onnx"):
            await runtime.load("linear", {})
        # As in Triton's EXPLICIT mode, the failed reload leaves the loaded version serving.
        assert [s.state for s in runtime.index() if s.name == "linear"] == ["READY"]
        assert runtime.resolve("linear", None) == "1"
        shutil.copytree(repository / "int_ops", repository / "new_model")
        (repository / "new_model" / "config.pbtxt").write_text(
            (repository / "int_ops" / "config.pbtxt").read_text()
        )
        await runtime.load("new_model", {})
        assert runtime.resolve("new_model", None) == "1"
    finally:
        await runtime.stop()


async def test_stop_finishes_requests_in_flight(example_repository: Path) -> None:
    runtime = TorchRuntime(example_repository, CPU, 1)
    await runtime.start()
    inputs, names = CASES["image_classifier"]
    with anyio.fail_after(10):
        pending = [
            asyncio.ensure_future(runtime.infer("image_classifier", "1", inputs, names)) for _ in range(3)
        ]
        await asyncio.sleep(0)
        await runtime.stop()
        assert not runtime.healthy()
        assert all(p.done() and p.result()["output__0"].shape == (2, 10) for p in pending)


async def test_a_request_that_breaks_the_model_fails_alone(tmp_path: Path) -> None:
    add_picky(tmp_path, 20000)
    runtime = TorchRuntime(tmp_path, CPU, 1)
    await runtime.start()
    try:
        values = [1.0, -1.0, 2.0, 3.0]
        with anyio.fail_after(10):
            results = await infer_picky(runtime, values)
        assert isinstance(results[1], InternalError)
        assert "negative input" in str(results[1]) and "Traceback" not in str(results[1])
        for value, result in zip(values, results, strict=True):
            if value > 0:
                np.testing.assert_array_equal(result["output__0"], np.full((1, 2), 2 * value))  # type: ignore[index]
        [stats] = runtime.statistics("picky", "1")["model_stats"]
        assert stats["inference_stats"]["fail"]["count"] == 1
        assert stats["inference_stats"]["success"]["count"] == 3
    finally:
        await runtime.stop()


class Reshaping(nn.Module):
    """Sees the reshaped inputs: its results differ if handed config.pbtxt's `dims` instead."""

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.cumsum(x, dim=1), y * 2, z[..., 0]


RESHAPING_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 4
input [
  { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape { shape: [ 6 ] } },
  { name: "INPUT__1" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } },
  { name: "INPUT__2" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape { shape: [ -1, 2, 2 ] } }
]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2, 3 ] reshape { shape: [ 6 ] } },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } },
  { name: "OUTPUT__2" data_type: TYPE_FP32 dims: [ -1, 2 ] }
]
dynamic_batching { }
"""


async def test_reshape_applies_to_inputs_before_and_outputs_after_the_model(tmp_path: Path) -> None:
    examples = (torch.rand(1, 6), torch.rand(1), torch.rand(1, 3, 2, 2))
    write_model(tmp_path, "reshaping", Reshaping(), examples, RESHAPING_CONFIG)
    runtime = TorchRuntime(tmp_path, CPU, 1)
    await runtime.start()
    try:
        requests = [
            {
                "INPUT__0": RNG.random((batch, 2, 3), dtype=np.float32),
                "INPUT__1": RNG.random((batch, 1), dtype=np.float32),
                "INPUT__2": RNG.random((batch, 5, 4), dtype=np.float32),
            }
            for batch in (1, 2)
        ]
        names = ["OUTPUT__0", "OUTPUT__1", "OUTPUT__2"]
        with anyio.fail_after(10):
            results = await asyncio.gather(*(runtime.infer("reshaping", "1", r, names) for r in requests))
        for request, result in zip(requests, results, strict=True):
            batch = len(request["INPUT__0"])
            x, y, z = request["INPUT__0"], request["INPUT__1"], request["INPUT__2"]
            cumulative = np.cumsum(x.reshape(batch, 6), axis=1).reshape(batch, 2, 3)
            np.testing.assert_allclose(result["OUTPUT__0"], cumulative, rtol=1e-6)
            np.testing.assert_array_equal(result["OUTPUT__1"], y * 2)
            np.testing.assert_array_equal(result["OUTPUT__2"], z.reshape(batch, 5, 2, 2)[..., 0])
    finally:
        await runtime.stop()


async def test_an_output_of_another_dtype_than_the_config_fails_the_request(repository: Path) -> None:
    config = repository / "int_ops" / "config.pbtxt"
    config.write_text(config.read_text().replace("TYPE_INT64", "TYPE_INT8"))
    runtime = TorchRuntime(repository, CPU, 1)
    await runtime.start()
    try:
        inputs, names = CASES["int_ops"]
        with pytest.raises(InternalError, match=r"output 'OUTPUT__1' as INT64, config\.pbtxt declares INT8"):
            await runtime.infer("int_ops", "1", inputs, names)
    finally:
        await runtime.stop()


async def test_models_the_torch_runtime_cannot_execute_faithfully_are_unavailable(repository: Path) -> None:
    linear = (repository / "linear" / "config.pbtxt").read_text()
    for name, config in {
        "sequence": linear.replace("dynamic_batching { }", "sequence_batching { }"),
        "pipeline": linear.replace('platform: "pytorch_libtorch"', 'platform: "ensemble"'),
    }.items():
        shutil.copytree(repository / "linear", repository / name)
        (repository / name / "config.pbtxt").write_text(config)
    runtime = TorchRuntime(repository, CPU, 1)
    await runtime.start()
    try:
        states = {s.name: s for s in runtime.index()}
        for name in ("sequence", "pipeline"):
            assert states[name].state == "UNAVAILABLE"
            assert states[name].reason.endswith("; runtime: triton serves it")
        assert "sequence_batching" in states["sequence"].reason
        assert "'ensemble' is not TorchScript" in states["pipeline"].reason
        assert states["linear"].state == "READY"
    finally:
        await runtime.stop()


SLOW_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""
SLOW_INPUT = {"input__0": np.ones(2, np.float32)}


class Wedge:
    """Holds every execution of the model named 'slow' in its thread until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.entered = 0

    def hold(self) -> None:
        with self._lock:
            self.entered += 1
        self.release.wait(timeout=30)

    async def entered_at_least(self, count: int) -> None:
        while self.entered < count:
            await asyncio.sleep(0.01)


@pytest.fixture
def wedge(monkeypatch: pytest.MonkeyPatch, repository: Path) -> Iterator[Wedge]:
    """Adds 'slow' (2 instances, no batching) to `repository`; its executions hold until released."""
    write_model(repository, "slow", Scale(2.0), (torch.ones(2),), SLOW_CONFIG)
    wedge = Wedge()

    class Held(TorchScriptModel):
        def __init__(self, path: Path, *args: Any) -> None:
            super().__init__(path, *args)
            self.held = Path(path).parts[-3] == "slow"

        def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timings]:
            if self.held:
                wedge.hold()
            return super().__call__(inputs)

    monkeypatch.setattr(torch_runtime, "TorchScriptModel", Held)
    yield wedge
    wedge.release.set()


async def test_each_model_executes_on_its_own_instances_and_loads_do_not_wait(
    repository: Path, wedge: Wedge
) -> None:
    runtime = TorchRuntime(repository, CPU, 1)
    await runtime.start()
    try:
        with anyio.fail_after(20):
            slow = [
                asyncio.ensure_future(runtime.infer("slow", "1", SLOW_INPUT, ["output__0"])) for _ in range(3)
            ]
            await wedge.entered_at_least(2)  # instance_group count 2: two execute at once
            # While both of its instances are stuck, other models answer and load.
            inputs, names = CASES["linear"]
            assert (await runtime.infer("linear", "1", inputs, names))["output__0"].shape == (5, 4)
            await runtime.load("int_ops", {})
            assert runtime.healthy()  # well within execution_timeout_s
            assert wedge.entered == 2  # the third waits for an instance
            wedge.release.set()
            results = await asyncio.gather(*slow)
        assert all((r["output__0"] == 2).all() for r in results)
        assert wedge.entered == 3
    finally:
        await runtime.stop()


async def test_a_wedged_execution_makes_the_runtime_unhealthy_while_serving_or_unloading(
    repository: Path, wedge: Wedge, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = TorchRuntime(repository, CPU, 1, execution_timeout_s=0.05)
    await runtime.start()
    try:
        assert runtime.healthy()
        with anyio.fail_after(20):
            pending = asyncio.ensure_future(runtime.infer("slow", "1", SLOW_INPUT, ["output__0"]))
            while runtime.healthy():
                await asyncio.sleep(0.01)
            assert "model 'slow' version 1: an execution has run for" in caplog.text
            assert "past execution_timeout_s 0.05" in caplog.text
            caplog.clear()
            unloading = asyncio.ensure_future(runtime.unload("slow"))
            await asyncio.sleep(0)
            assert not runtime.healthy()  # unloading waits on the wedged execution: still reported
            assert "model 'slow' version 1 (unloading): an execution has run for" in caplog.text
            wedge.release.set()
            await pending
            await unloading
        assert runtime.healthy()
    finally:
        await runtime.stop()


async def test_a_failed_scheduler_makes_the_runtime_unhealthy(
    runtime: TorchRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise KeyError("bookkeeping bug")

    monkeypatch.setattr(ModelStatistics, "record_execution", broken)
    inputs, names = CASES["linear"]
    with anyio.fail_after(10), pytest.raises(InternalError, match="the scheduler failed"):
        await runtime.infer("linear", "1", inputs, names)
    assert not runtime.healthy()


async def test_an_unloaded_model_is_freed_without_the_garbage_collector(mixed_repository: Path) -> None:
    """Its memory goes back when the unload ends, not at the collector's next full pass (on demand a
    replica's resident set grew by gigabytes between passes while models came and went)."""
    runtime = TorchRuntime(mixed_repository, CPU, 1)
    await runtime.start()
    gc.disable()
    try:
        inputs, names = CASES["linear"]
        await runtime.infer("linear", "1", inputs, names)
        scheduler = weakref.ref(runtime._models["linear"].versions[1].scheduler)
        await runtime.unload("linear")
        await asyncio.sleep(0.1)  # the instance threads end
        assert scheduler() is None
    finally:
        gc.enable()
        await runtime.stop()
