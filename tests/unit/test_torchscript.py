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


# case → (module, input names in config order, inputs by name, expected output__0): indexed names
# go by their index, forward-argument names by name, others in config order.
INPUT_CASES = {
    "indexed": (Difference(), ["INPUT__1", "INPUT__0"], {"INPUT__0": A, "INPUT__1": B}, A - B),
    "lowercase-indexed": (Difference(), ["input__0", "input__1"], {"input__1": A, "input__0": B}, B - A),
    "forward-argument-names": (ShiftByScale(), ["scale", "x"], {"scale": B, "x": A}, A - 2 * B),
    # "second" is the first argument
    "other-names": (ShiftByScale(), ["second", "first"], {"first": A, "second": B}, B - 2 * A),
}


@pytest.mark.parametrize(
    ("module", "config_order", "inputs", "expected"), INPUT_CASES.values(), ids=list(INPUT_CASES)
)
def test_inputs_reach_their_forward_argument(
    tmp_path: Path,
    module: nn.Module,
    config_order: list[str],
    inputs: dict[str, np.ndarray],
    expected: np.ndarray,
) -> None:
    path = save(tmp_path, module, torch.from_numpy(A), torch.from_numpy(B))
    model = TorchScriptModel(path, config_order, ["output__0"], [F32], CPU)
    outputs, _ = model(inputs)
    np.testing.assert_array_equal(outputs["output__0"], expected)


@pytest.mark.parametrize(
    ("config_order", "plus_one", "times_ten"),
    [
        pytest.param(
            ["output__1", "output__0"], "output__0", "output__1", id="indexed-names-pick-their-element"
        ),
        pytest.param(["plus_one", "times_ten"], "plus_one", "times_ten", id="other-names-in-config-order"),
    ],
)
def test_outputs_map_to_tuple_elements(
    tmp_path: Path, config_order: list[str], plus_one: str, times_ten: str
) -> None:
    path = save(tmp_path, TwoOutputs(), torch.from_numpy(A))
    model = TorchScriptModel(path, ["input__0"], config_order, [F32, F32], CPU)
    outputs, _ = model({"input__0": A})
    np.testing.assert_array_equal(outputs[plus_one], A + 1)
    np.testing.assert_array_equal(outputs[times_ten], A * 10)


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
