"""TorchScriptModel: the PyTorch backend's input/output naming conventions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from serve_app.runtimes.torch.torchscript import TorchScriptModel

CPU = torch.device("cpu")
F32 = np.dtype(np.float32)


class Difference(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b


class ShiftByScale(nn.Module):
    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x - 2 * scale


class TwoOutputs(nn.Module):
    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a + 1, a * 10


def save(tmp_path: Path, module: nn.Module, *examples: torch.Tensor) -> Path:
    path = tmp_path / f"{type(module).__name__}.pt"
    torch.jit.trace(module.eval(), examples).save(str(path))
    return path


A = np.array([[5.0, 7.0]], np.float32)
B = np.array([[1.0, 2.0]], np.float32)


def test_indexed_inputs_go_by_index_not_config_order(tmp_path: Path) -> None:
    path = save(tmp_path, Difference(), torch.from_numpy(A), torch.from_numpy(B))
    model = TorchScriptModel(path, ["INPUT__1", "INPUT__0"], ["OUTPUT__0"], [F32], CPU)
    outputs, _ = model({"INPUT__0": A, "INPUT__1": B})
    np.testing.assert_array_equal(outputs["OUTPUT__0"], A - B)


def test_lowercase_indexed_inputs(tmp_path: Path) -> None:
    path = save(tmp_path, Difference(), torch.from_numpy(A), torch.from_numpy(B))
    model = TorchScriptModel(path, ["input__0", "input__1"], ["output__0"], [F32], CPU)
    np.testing.assert_array_equal(model({"input__1": A, "input__0": B})[0]["output__0"], B - A)


def test_forward_argument_names_win_over_config_order(tmp_path: Path) -> None:
    path = save(tmp_path, ShiftByScale(), torch.from_numpy(A), torch.from_numpy(B))
    model = TorchScriptModel(path, ["scale", "x"], ["output__0"], [F32], CPU)
    outputs, _ = model({"scale": B, "x": A})
    np.testing.assert_array_equal(outputs["output__0"], A - 2 * B)


def test_other_names_are_passed_in_config_order(tmp_path: Path) -> None:
    path = save(tmp_path, ShiftByScale(), torch.from_numpy(A), torch.from_numpy(B))
    model = TorchScriptModel(path, ["second", "first"], ["output__0"], [F32], CPU)
    outputs, _ = model({"first": A, "second": B})
    np.testing.assert_array_equal(outputs["output__0"], B - 2 * A)  # "second" is the first argument


def test_indexed_outputs_pick_their_tuple_element(tmp_path: Path) -> None:
    path = save(tmp_path, TwoOutputs(), torch.from_numpy(A))
    model = TorchScriptModel(path, ["input__0"], ["output__1", "output__0"], [F32, F32], CPU)
    outputs, _ = model({"input__0": A})
    np.testing.assert_array_equal(outputs["output__0"], A + 1)
    np.testing.assert_array_equal(outputs["output__1"], A * 10)


def test_other_output_names_map_in_config_order(tmp_path: Path) -> None:
    path = save(tmp_path, TwoOutputs(), torch.from_numpy(A))
    model = TorchScriptModel(path, ["input__0"], ["plus_one", "times_ten"], [F32, F32], CPU)
    outputs, _ = model({"input__0": A})
    np.testing.assert_array_equal(outputs["plus_one"], A + 1)
    np.testing.assert_array_equal(outputs["times_ten"], A * 10)


def test_single_tensor_output(tmp_path: Path) -> None:
    path = save(tmp_path, nn.ReLU(), torch.from_numpy(A))
    model = TorchScriptModel(path, ["input__0"], ["output__0"], [F32], CPU)
    outputs, timings = model({"input__0": -A})
    assert outputs["output__0"].dtype == np.float32
    np.testing.assert_array_equal(outputs["output__0"], np.zeros_like(A))
    assert min(timings.compute_input, timings.compute_infer, timings.compute_output) >= 0
    assert timings.compute_infer > 0


class Int64Output(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return (a * 100).to(torch.int64)


@pytest.mark.parametrize(
    ("module", "declared", "message"),
    [
        (Int64Output(), np.int8, "as INT64, config.pbtxt declares INT8"),
        (nn.ReLU(), np.float64, "as FP32, config.pbtxt declares FP64"),
        (nn.ReLU(), np.float16, "as FP32, config.pbtxt declares FP16"),
    ],
)
def test_an_output_dtype_other_than_the_config_is_an_error_not_a_cast(
    tmp_path: Path, module: nn.Module, declared: type, message: str
) -> None:
    # A cast would wrap INT64 500 to INT8 -12, or round FP32 to FP16: Triton's backend refuses both.
    path = save(tmp_path, module, torch.from_numpy(A))
    model = TorchScriptModel(path, ["input__0"], ["output__0"], [np.dtype(declared)], CPU)
    with pytest.raises(TypeError, match=re.escape(f"output 'output__0' {message}")):
        model({"input__0": A})


def test_read_only_unaligned_inputs_from_a_binary_body(tmp_path: Path) -> None:
    """Binary request inputs are np.frombuffer views at arbitrary offsets of immutable bytes."""
    path = save(tmp_path, Difference(), torch.from_numpy(A), torch.from_numpy(B))
    model = TorchScriptModel(path, ["INPUT__0", "INPUT__1"], ["OUTPUT__0"], [F32], CPU)
    body = b"\x01" + A.tobytes() + B.tobytes()
    a = np.frombuffer(body, F32, count=2, offset=1).reshape(1, 2)
    b = np.frombuffer(body, F32, count=2, offset=9).reshape(1, 2)
    assert not a.flags.writeable and not a.flags.aligned
    np.testing.assert_array_equal(model({"INPUT__0": a, "INPUT__1": b})[0]["OUTPUT__0"], A - B)


def test_fewer_returned_outputs_than_configured_is_an_error(tmp_path: Path) -> None:
    path = save(tmp_path, nn.ReLU(), torch.from_numpy(A))
    model = TorchScriptModel(path, ["input__0"], ["output__0", "output__1"], [F32, F32], CPU)
    with pytest.raises(RuntimeError, match=r"model returned 1 outputs, config\.pbtxt declares 2"):
        model({"input__0": A})
