"""TritonRuntime on the in-process Triton build: parity with the torch runtime, errors, batching, stop.

One Triton server serves this module (examples + broken entries + a model that fails on some
inputs); the stop tests start small servers of their own. Skipped only where `tritonserver`
does not import (`python -m serve_app.triton_install install`); CI installs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import numpy as np
import pytest
import torch
from torch import nn

from serve_app.bytes_tensors import as_array
from serve_app.config import AppArgs
from serve_app.dataplane import RUNTIME_EXTENSIONS, SERVED_EXTENSIONS, DataPlane
from serve_app.datatypes import DATATYPE_BY_NUMPY
from serve_app.errors import (
    InternalError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServeAppError,
    status_for,
)
from serve_app.examples import EXAMPLES
from serve_app.infer_types import InferRequest, InputTensor
from serve_app.model_state.replica import DeploymentModels
from serve_app.placement import Placement
from serve_app.runtimes.base import Runtime
from serve_app.runtimes.torch.runtime import TorchRuntime
from serve_app.runtimes.triton import runtime as triton_module
from serve_app.runtimes.triton.bindings_caller import BindingsCaller
from serve_app.runtimes.triton.extension_caller import ExtensionCaller, extension
from serve_app.runtimes.triton.runtime import TritonRuntime
from tests.conftest import add_picky, add_scripted, add_string_models, example_cases, infer_picky

pytest.importorskip("tritonserver", reason="needs `python -m serve_app.triton_install install`")

pytestmark = [pytest.mark.triton, pytest.mark.anyio]

CPU_PLACEMENT = Placement(gpu_ids=(), cuda_visible_devices=None, num_cpus=1.0, replica="test", node_id="")
TOLERANCE = 1e-5
RNG = np.random.default_rng(4)

CASES = example_cases(RNG)

# Models beside the examples in this module's repository (`repository` adds them).
ADDED_HERE = (
    "double",
    "echo",
    "linear_gathered",
    "linear_twice",
    "picky",
    "py_strings",
    "strings",
    "strings_batched",
)


DOUBLE_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 64
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


# A python-backend model that reports what Triton handed it: the request's correlation id, flags,
# timeout and its custom parameter `tag`, so the test sees the request fields arrive.
ECHO_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "fields" data_type: TYPE_INT64 dims: [ 4 ] } ]
sequence_batching { max_sequence_idle_microseconds: 60000000 }
"""
ECHO_MODEL = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            tag = json.loads(request.parameters() or "{}").get("tag", -1)
            fields = np.array(
                [request.correlation_id(), request.flags(), request.timeout(), tag], dtype=np.int64
            )
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("fields", fields)]))
        return responses
"""
# linear (16 → 4) then double: an ensemble of two TorchScript models, run by Triton's scheduler.
ENSEMBLE_CONFIG = """
platform: "ensemble"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "linear" model_version: -1
    input_map { key: "input__0" value: "x" } output_map { key: "output__0" value: "hidden" } },
  { model_name: "double" model_version: -1
    input_map { key: "input__0" value: "hidden" } output_map { key: "output__0" value: "y" } }
] }
"""


# BYTES on both backends: TorchScript takes and returns 1-D List[str] (Triton's PyTorch backend);
# the python backend any shape of any bytes.
PY_STRINGS_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_STRING dims: [ -1, -1 ] } ]
output [ { name: "y" data_type: TYPE_STRING dims: [ -1, -1 ] } ]
"""
PY_STRINGS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = np.array([value[::-1] for value in x.flat], dtype=object).reshape(x.shape)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return responses
"""


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def triton_args(repository: Path, **overrides: object) -> AppArgs:
    return AppArgs.model_validate(
        {"model_repository": repository, "runtime": "triton", "torch_threads": 1, **overrides}
    )


@pytest.fixture(scope="module")
def repository(mixed_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples, the broken entries (tests/conftest.py) and `picky`; writable, this module's."""
    path = tmp_path_factory.mktemp("triton") / "repo"
    shutil.copytree(mixed_repository, path)
    add_picky(path, 50000)
    add_scripted(path, "double", Double(), DOUBLE_CONFIG)
    (path / "echo" / "1").mkdir(parents=True)
    (path / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    (path / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    add_string_models(path)
    (path / "py_strings" / "1").mkdir(parents=True)
    (path / "py_strings" / "1" / "model.py").write_text(PY_STRINGS_MODEL)
    (path / "py_strings" / "config.pbtxt").write_text(PY_STRINGS_CONFIG)
    (path / "linear_twice" / "1").mkdir(parents=True)  # an ensemble's version directory is empty
    (path / "linear_twice" / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    # linear whose batcher waits 100 ms to gather: a test of batching needs requests that meet
    # (plain `linear` answers each request before the next is submitted when the machine is quiet).
    shutil.copytree(path / "linear", path / "linear_gathered")
    config = (path / "linear_gathered" / "config.pbtxt").read_text()
    gathering = config.replace(
        "dynamic_batching { }", "dynamic_batching { max_queue_delay_microseconds: 100000 }"
    )
    assert gathering != config
    (path / "linear_gathered" / "config.pbtxt").write_text(gathering)
    return path


@pytest.fixture(scope="module", params=[ExtensionCaller, BindingsCaller], ids=["extension", "bindings"])
async def triton(request: pytest.FixtureRequest, repository: Path) -> AsyncIterator[TritonRuntime]:
    """Every test runs on both request paths: serve_app's extension, and the bindings' path
    that serves where the extension is not built."""
    if request.param is ExtensionCaller and extension() is None:
        pytest.skip("serve_app's request extension is not built (python -m serve_app.triton_install install)")
    runtime = TritonRuntime(triton_args(repository), CPU_PLACEMENT)
    with pytest.MonkeyPatch.context() as patch:
        if request.param is BindingsCaller:
            patch.setattr(triton_module, "extension", lambda: None)
        await runtime.start()
    assert isinstance(runtime._requests, request.param)
    yield runtime
    await runtime.stop()


@pytest.fixture(scope="module")
async def torch_runtime(repository: Path) -> AsyncIterator[TorchRuntime]:
    runtime = TorchRuntime(repository, torch.device("cpu"), 1)
    await runtime.start()
    yield runtime
    await runtime.stop()


def test_every_example_model_has_a_parity_case() -> None:
    assert set(CASES) == set(EXAMPLES)


@pytest.mark.parametrize("model", sorted(CASES))
async def test_outputs_equal_the_torch_runtime(
    triton: TritonRuntime, torch_runtime: TorchRuntime, model: str
) -> None:
    inputs, names = CASES[model]
    got = await triton.infer(model, "1", inputs, names)
    want = await torch_runtime.infer(model, "1", inputs, names)
    assert list(got) == names
    for name in names:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert np.max(np.abs(got[name].astype(np.float64) - want[name]), initial=0) <= TOLERANCE, name


@pytest.mark.parametrize("model", sorted(CASES))
async def test_metadata_and_config_are_the_users_model(
    triton: TritonRuntime, torch_runtime: TorchRuntime, model: str
) -> None:
    """Triton's config is the repository's, plus the thread count from the replica's CPUs."""
    assert triton.metadata(model, None) == torch_runtime.metadata(model, None)
    assert triton.metadata(model, "1") == torch_runtime.metadata(model, "1")
    assert triton.signature(model, "1") == torch_runtime.signature(model, "1")
    config, expected = triton.config(model, "1"), torch_runtime.config(model, "1")
    assert config["platform"] == "pytorch_libtorch" and config["backend"] == "pytorch"
    assert config["default_model_filename"] == "model.pt"
    assert config["parameters"] == {"INTRA_OP_THREAD_COUNT": {"string_value": "1"}}
    assert config["name"] == expected["name"] and config["version_policy"] == expected["version_policy"]
    assert config["max_batch_size"] == expected.get("max_batch_size", 0)  # ours omits proto defaults
    for key in ("input", "output"):
        assert [(t["name"], t["data_type"], t["dims"]) for t in config[key]] == [
            (t["name"], t["data_type"], t["dims"]) for t in expected[key]
        ]
    assert ("dynamic_batching" in config) == ("dynamic_batching" in expected)


def strings(*values: bytes) -> np.ndarray:
    return as_array(list(values))


async def test_bytes_in_and_out_on_every_backend(triton: TritonRuntime, torch_runtime: TorchRuntime) -> None:
    """BYTES through Triton on both request paths: TorchScript's 1-D List[str] (the same answers
    as the torch runtime's), and the python backend's 2-D tensors of any bytes, empty ones too."""
    text = strings(b"he\x00llo", b"", "żółw".encode())
    for runtime in (triton, torch_runtime):
        got = await runtime.infer("strings", "1", {"INPUT__0": text}, ["OUTPUT__0", "OUTPUT__1"])
        assert got["OUTPUT__0"].dtype == np.dtype(object) and got["OUTPUT__0"].shape == (3,)
        assert got["OUTPUT__0"].tolist() == [b"he\x00llo!", b"!", "żółw!".encode()]
        assert got["OUTPUT__1"].tolist() == [6, 0, 7]  # TorchScript counts a str in UTF-8 bytes
        batch = strings(b"a", b"bc", b"").reshape(3, 1)
        got = await runtime.infer("strings_batched", "1", {"INPUT__0": batch}, ["OUTPUT__0"])
        assert got["OUTPUT__0"].shape == (3, 1) and got["OUTPUT__0"].tolist() == [[b"A"], [b"BC"], [b""]]
    grid = strings(b"ab", b"\xff\x00", b"", b"xyz", b"\x00", b"q").reshape(2, 3)
    got = await triton.infer("py_strings", "1", {"x": grid}, ["y"])
    assert got["y"].shape == (2, 3)
    assert got["y"].tolist() == [[b"ba", b"\x00\xff", b""], [b"zyx", b"\x00", b"q"]]
    empty = await triton.infer("py_strings", "1", {"x": strings().reshape(0, 2)}, ["y"])
    assert empty["y"].shape == (0, 2)


async def test_server_index_versions_and_health(triton: TritonRuntime) -> None:
    assert triton.healthy() and triton.device() == "cpu"
    assert triton.server_metadata()["name"] == "triton"
    advertised = DataPlane(
        triton, DeploymentModels.in_process(triton), model_control=False, placement={}
    ).server_metadata()["extensions"]
    assert advertised == [*SERVED_EXTENSIONS, *RUNTIME_EXTENSIONS]  # not Triton core's whole list
    ready = [(s.name, s.version) for s in triton.index() if s.state == "READY"]
    assert ready == [(name, "1") for name in sorted([*CASES, *ADDED_HERE])]
    assert triton.resolve("linear", None) == "1"
    assert triton.resolve("linear", "01") == "1"
    assert triton.resolve("linear", " 1abc") == "1"  # std::stol, as Triton reads a version
    for version in ("2", "0"):
        with pytest.raises(
            ModelNotFoundError, match=f"^Request for unknown model: 'linear' version {version} is not"
        ):
            triton.resolve("linear", version)
    for version in ("latest", "²", ""):
        with pytest.raises(InvalidInputError, match=f"version string '{version}' \\(details: stol\\)"):
            triton.resolve("linear", version)
    with pytest.raises(InvalidInputError, match=r"^invalid model version specified '-1' , version should be"):
        triton.resolve("linear", "-1")
    with pytest.raises(ModelNotFoundError, match=r"^Request for unknown model: 'nope' is not found$"):
        triton.metadata("nope", None)
    assert triton.statistics("linear", "01")["model_stats"][0]["version"] == "1"
    everything = triton.statistics(None, None)["model_stats"]
    assert sorted(s["name"] for s in everything) == sorted([*CASES, *ADDED_HERE])


async def test_broken_entries_are_unavailable_with_a_reason_while_the_others_serve(
    triton: TritonRuntime, broken_reasons: dict[str, str]
) -> None:
    # Triton's reasons (the parser's detail where Triton only says it failed to poll).
    reasons = broken_reasons | {
        "corrupt_torchscript": "PytorchStreamReader failed reading zip archive",
        "onnx_model": "onnxruntime",
    }
    states = {s.name: s for s in triton.index()}
    for name, reason in reasons.items():
        assert states[name].state == "UNAVAILABLE" and reason in states[name].reason, states[name]
        assert "At:" not in states[name].reason
        with pytest.raises(ModelNotReadyError, match=f"model '{name}' is not ready: .*{reason}"):
            triton.resolve(name, None)
    inputs, names = CASES["linear"]
    assert (await triton.infer("linear", "1", inputs, names))["output__0"].shape == (5, 4)


def _request(model: str, version: str | None = None, **arrays: np.ndarray) -> InferRequest:
    tensors = [InputTensor(name, DATATYPE_BY_NUMPY[a.dtype], a.shape, a) for name, a in arrays.items()]
    return InferRequest(model, version, tensors)


F32 = np.float32
BAD_REQUESTS = {
    "wrong-datatype": _request("linear", input__0=np.zeros((1, 16), np.float64)),
    "wrong-shape": _request("linear", input__0=np.zeros((1, 15), F32)),
    "missing-batch-dim": _request("linear", input__0=np.zeros(16, F32)),
    "wrong-shape-no-batching": _request("int_ops", INPUT__0=np.zeros((3, 2), np.int32)),
    "missing-input": _request("multi_io", x=np.zeros((1, 3), F32)),
    "unknown-input": _request("linear", nope=np.zeros((1, 16), F32)),
    "batch-over-max": _request("multi_io", x=np.zeros((5, 2), F32), scale=np.zeros((5, 1), F32)),
    "unknown-model": _request("nope", input__0=np.zeros((1, 16), F32)),
    "unknown-version": _request("linear", "7", input__0=np.zeros((1, 16), F32)),
    "broken-model": _request("corrupt_torchscript", input__0=np.zeros((1, 1), F32)),
    "unparsable-model": _request("bad_pbtxt", input__0=np.zeros((1, 1), F32)),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_requests_get_the_torch_runtimes_errors(
    triton: TritonRuntime, torch_runtime: TorchRuntime, case: str
) -> None:
    errors: list[ServeAppError] = []
    runtime: Runtime
    for runtime in (triton, torch_runtime):
        with pytest.raises(ServeAppError) as raised:
            await DataPlane(
                runtime, DeploymentModels.in_process(runtime), model_control=False, placement={}
            ).infer(BAD_REQUESTS[case])
        errors.append(raised.value)
    assert type(errors[0]) is type(errors[1]) and status_for(errors[0]) in (400, 404, 503)
    assert "Traceback" not in str(errors[0])


@pytest.mark.parametrize(
    "inputs",
    [
        {"input__0": np.zeros((1, 16), np.float64)},  # datatype
        {"input__0": np.zeros((1, 15), np.float32)},  # shape
        {"input__0": np.zeros((65, 16), np.float32)},  # batch over max_batch_size 64
        {},  # missing input
    ],
)
async def test_triton_itself_refuses_bad_inputs_as_invalid(
    triton: TritonRuntime, inputs: dict[str, np.ndarray]
) -> None:
    """Inputs that skip the dataplane's checks are refused by Triton, with a 400 and a clean message."""
    with pytest.raises(InvalidInputError) as raised:
        await triton.infer("linear", "1", inputs, ["output__0"])
    assert "linear" in str(raised.value) and not str(raised.value).startswith("[request id")
    assert triton.healthy()


async def test_a_request_that_breaks_the_model_fails_its_execution_only(triton: TritonRuntime) -> None:
    """As in standalone Triton, a forward that raises fails the requests batched into it, with a
    one-line reason; requests after it serve. (The torch runtime retries batch-mates alone.)"""
    values = [1.0, -1.0, 2.0, 3.0]
    with anyio.fail_after(60):
        results = await infer_picky(triton, values)
    assert isinstance(results[1], InternalError), results[1]
    assert "negative input" in str(results[1]) and "Traceback" not in str(results[1])
    assert "\n" not in str(results[1])
    for value, result in zip(values, results, strict=True):
        if isinstance(result, dict):
            np.testing.assert_array_equal(result["output__0"], np.full((1, 2), 2 * value))
        else:
            assert isinstance(result, InternalError) and "negative input" in str(result)
    alone = await triton.infer("picky", "1", {"input__0": np.full((1, 2), 4.0, np.float32)}, ["output__0"])
    np.testing.assert_array_equal(alone["output__0"], np.full((1, 2), 8.0))
    # Triton counts a success after it has sent the response: poll briefly for the count.
    with anyio.fail_after(10):
        while True:
            [stats] = triton.statistics("picky", "1")["model_stats"]
            counts = stats["inference_stats"]
            if counts["fail"]["count"] >= 1 and counts["success"]["count"] >= 1:
                break
            await asyncio.sleep(0.01)


async def test_an_ensemble_of_two_torchscript_models(triton: TritonRuntime) -> None:
    inputs = {"x": RNG.standard_normal((3, 16), dtype=np.float32)}
    linear = await triton.infer("linear", "1", {"input__0": inputs["x"]}, ["output__0"])
    result = await DataPlane(
        triton, DeploymentModels.in_process(triton), model_control=False, placement={}
    ).infer(_request("linear_twice", **inputs))
    [(output, array)] = result.outputs
    assert output.name == "y"
    np.testing.assert_allclose(array, 2 * linear["output__0"], rtol=0, atol=TOLERANCE)
    assert triton.metadata("linear_twice", None)["platform"] == "ensemble"


async def test_request_fields_reach_the_model(triton: TritonRuntime) -> None:
    """Sequence id and flags, timeout and custom parameters arrive at a python-backend model."""
    dataplane = DataPlane(triton, DeploymentModels.in_process(triton), model_control=False, placement={})
    x = np.ones(1, np.float32)
    request = _request("echo", x=x)
    request.parameters = {"sequence_id": 42, "sequence_start": True, "timeout": 5_000_000, "tag": 7}
    [(_, fields)] = (await dataplane.infer(request)).outputs
    assert fields.tolist() == [42, 1, 5_000_000, 7]  # flags: SEQUENCE_START
    request.parameters = {"sequence_id": 42, "sequence_end": True}
    [(_, fields)] = (await dataplane.infer(request)).outputs
    assert fields.tolist()[:2] == [42, 2]  # flags: SEQUENCE_END
    request.parameters = {}
    with pytest.raises(InvalidInputError, match="correlation ID"):  # a sequence model needs an id
        await dataplane.infer(request)


async def test_cancelled_requests_leave_nothing_behind(triton: TritonRuntime) -> None:
    """Requests cancelled in flight (a client gone) end in Triton; the others get their answers,
    which stay intact while later requests reuse the memory of the cancelled ones."""
    inputs, names = CASES["image_classifier"]
    with anyio.fail_after(60):
        pending = [
            asyncio.ensure_future(triton.infer("image_classifier", "1", inputs, names)) for _ in range(8)
        ]
        await asyncio.sleep(0)  # every request is now in Triton
        for task in pending[::2]:
            task.cancel()
        results = await asyncio.gather(*pending, return_exceptions=True)
        kept = [r for r in results if isinstance(r, dict)]
        assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
        assert len(kept) == 4
        first = kept[0]["output__0"].copy()
        for _ in range(20):
            await triton.infer("image_classifier", "1", inputs, names)
        np.testing.assert_array_equal(kept[0]["output__0"], first)
        caller = triton._requests
        if isinstance(caller, ExtensionCaller):  # every request released: no inputs or futures held
            [requests] = caller._loops.values()
            while requests._inputs or requests._futures:
                await asyncio.sleep(0.01)


async def test_concurrent_requests_are_batched_by_triton(
    triton: TritonRuntime, torch_runtime: TorchRuntime
) -> None:
    [before] = triton.statistics("linear_gathered", "1")["model_stats"]
    rows = [RNG.standard_normal((1 + i % 2, 16), dtype=np.float32) for i in range(64)]
    with anyio.fail_after(60):
        results = await asyncio.gather(
            *(triton.infer("linear_gathered", "1", {"input__0": r}, ["output__0"]) for r in rows)
        )
    for row, result in zip(rows, results, strict=True):
        want = await torch_runtime.infer("linear", "1", {"input__0": row}, ["output__0"])
        np.testing.assert_allclose(result["output__0"], want["output__0"], rtol=0, atol=TOLERANCE)
    [after] = triton.statistics("linear_gathered", "1")["model_stats"]
    executions = after["execution_count"] - before["execution_count"]
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert requests == len(rows)
    assert after["inference_count"] - before["inference_count"] == sum(len(r) for r in rows)
    assert executions < len(rows), f"{executions} executions for {len(rows)} requests"
    assert max(b["batch_size"] for b in after["batch_stats"]) > 2
    # The backend is built with statistics: compute and queue times are real parts of the total.
    stats = after["inference_stats"]
    assert 0 < stats["compute_infer"]["ns"] < stats["success"]["ns"]
    assert 0 < stats["queue"]["ns"] < stats["success"]["ns"]


async def test_unload_load_and_a_broken_reload(triton: TritonRuntime, repository: Path) -> None:
    inputs, names = CASES["int_ops"]
    try:
        await triton.unload("int_ops")
        assert ("int_ops", "1", "UNAVAILABLE", "unloaded") in [
            (s.name, s.version, s.state, s.reason) for s in triton.index()
        ]
        with pytest.raises(ModelNotReadyError, match="model 'int_ops' is not ready: unloaded"):
            triton.resolve("int_ops", None)
        with pytest.raises(ModelNotReadyError):
            await triton.infer("int_ops", "1", inputs, names)
    finally:
        await triton.load("int_ops", {})
    assert triton.resolve("int_ops", None) == "1"
    assert (await triton.infer("int_ops", "1", inputs, names))["OUTPUT__1"].dtype == np.int64

    with pytest.raises(
        InvalidInputError,
        match=r"^failed to load 'nope', failed to poll from model repository: no directory 'nope'",
    ):
        await triton.load("nope", {})
    shutil.copytree(repository / "bad_pbtxt", repository / "late_bad")
    try:
        with pytest.raises(ModelNotReadyError, match=r"failed to load 'late_bad': .*cannot parse"):
            await triton.load("late_bad", {})
        [state] = [s for s in triton.index() if s.name == "late_bad"]
        assert state.state == "UNAVAILABLE" and "cannot parse" in state.reason
    finally:
        shutil.rmtree(repository / "late_bad")  # the repository serves the next runtime of this module


async def test_stop_completes_requests_in_flight(example_repository: Path, tmp_path: Path) -> None:
    shutil.copytree(example_repository / "image_classifier", tmp_path / "image_classifier")
    args = triton_args(tmp_path)
    runtime = TritonRuntime(args, CPU_PLACEMENT)
    await runtime.start()
    inputs, names = CASES["image_classifier"]
    with anyio.fail_after(60):
        pending = [
            asyncio.ensure_future(runtime.infer("image_classifier", "1", inputs, names)) for _ in range(6)
        ]
        await asyncio.sleep(0)  # every request is now in Triton
        started = time.monotonic()
        await runtime.stop()
        took = time.monotonic() - started
    assert not runtime.healthy()
    assert all(p.done() and p.result()["output__0"].shape == (2, 10) for p in pending)
    assert took < args.stop_timeout_s
    with pytest.raises(ModelNotReadyError, match="stopped"):
        runtime.resolve("image_classifier", None)


async def test_a_hung_stop_is_cut_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = TritonRuntime(triton_args(tmp_path, stop_timeout_s=0.5), CPU_PLACEMENT)
    await runtime.start()
    server = runtime._server
    assert server is not None
    release = threading.Event()
    real_stop = server.stop
    monkeypatch.setattr(server, "stop", release.wait)
    started = time.monotonic()
    await runtime.stop()
    assert time.monotonic() - started < 5 and not runtime.healthy()
    release.set()
    await asyncio.to_thread(real_stop)


async def test_without_tritonserver_the_error_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tritonserver", None)  # makes `import tritonserver` fail
    runtime = TritonRuntime(triton_args(tmp_path), CPU_PLACEMENT)
    with pytest.raises(
        RuntimeError, match=r"python -m serve_app\.triton_install install.*configs/Dockerfile"
    ):
        await runtime.start()


# A replica's process as Ray starts it (nice 15, `RAY_worker_niceness`): Triton's model threads
# must not outrank its event loop. A child of its own, since niceness can only go up.
NICE_CHILD = """
import asyncio, json, os, sys
import numpy as np
from serve_app.bytes_tensors import as_array
from serve_app.config import AppArgs
from serve_app.placement import Placement
from serve_app.runtimes.triton import runtime as triton_module
from serve_app.runtimes.triton.runtime import TritonRuntime

os.nice(10)
changed = []
real = triton_module.match_process_niceness
triton_module.match_process_niceness = lambda: changed.append(real()) or changed[-1]

async def main():
    args = AppArgs.model_validate({"model_repository": sys.argv[1], "runtime": "triton"})
    runtime = TritonRuntime(args, Placement((), None, 1.0, "test", ""))
    await runtime.start()
    await runtime.infer("linear", "1", {"input__0": np.ones((2, 16), np.float32)}, ["output__0"])
    nices = [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")]
    await runtime.stop()
    process = os.getpriority(os.PRIO_PROCESS, 0)
    print(json.dumps({"process": process, "threads": nices, "changed": sum(changed)}))

asyncio.run(main())
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")
def test_triton_threads_run_at_the_replicas_niceness(example_repository: Path, tmp_path: Path) -> None:
    shutil.copytree(example_repository / "linear", tmp_path / "linear")
    completed = subprocess.run(
        [sys.executable, "-c", NICE_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    seen = json.loads(completed.stdout.strip().splitlines()[-1])
    assert seen["process"] >= 10
    assert min(seen["threads"]) == seen["process"], seen
    if os.geteuid() == 0:  # Triton may lower its threads' nice only with privilege: it did
        assert seen["changed"] > 0, seen
