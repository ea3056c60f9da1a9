"""Calling a TorchScript model the way Triton's PyTorch backend does.

Inputs named `<prefix>__<index>` (`input__0`, `INPUT__1`) are passed positionally
by index; otherwise names must match `forward()`'s arguments; otherwise config
order. Outputs named `<prefix>__<index>` pick that element of the returned tuple;
otherwise outputs map to tuple elements in config order. An output's dtype must be the
config's exactly, as the backend checks (a cast could wrap or round). BYTES inputs go in as
`List[str]` and BYTES outputs come back from `List[str]`, as the backend passes them (1-D). The
torch runtime calls models through this, so it computes what Triton's PyTorch backend computes.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve_app.bytes_tensors import OBJECT, as_array
from serve_app.datatypes import DATATYPE_BY_NUMPY

Arrays = dict[str, np.ndarray]

_INDEXED = re.compile(r"^.+__(\d+)$")

# Binary request bodies are read-only buffers; torch warns on wrapping them even
# though inference never writes to its inputs.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass(frozen=True)
class Timings:
    """Nanoseconds spent in one execution, as Triton's statistics split them."""

    compute_input: int
    compute_infer: int
    compute_output: int


def _indexed_order(names: Sequence[str]) -> list[int] | None:
    matches = [_INDEXED.match(n) for n in names]
    if not all(matches):
        return None
    return [int(m.group(1)) for m in matches]  # type: ignore[union-attr]


def _forward_argument_names(module: torch.jit.ScriptModule) -> list[str]:
    try:
        return [a.name for a in module.forward.schema.arguments[1:]]
    except AttributeError:
        return []


class TorchScriptModel:
    """A loaded TorchScript file with the backend's input/output conventions."""

    def __init__(
        self,
        path: Path | str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        output_dtypes: Sequence[np.dtype],
        device: torch.device,
        string_inputs: Collection[str] = (),
    ) -> None:
        """`string_inputs`: the BYTES inputs, which arrive as arrays of `str` (see TorchRuntime)."""
        self.device = device
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self.input_names = list(input_names)
        self._argument_order = self._input_order(self.input_names)
        self._strings = frozenset(string_inputs)
        indexed = _indexed_order(output_names)
        self._output_index = indexed if indexed is not None else list(range(len(output_names)))
        self._outputs = list(zip(output_names, output_dtypes, strict=True))

    def _input_order(self, names: list[str]) -> list[str]:
        indexed = _indexed_order(names)
        if indexed is not None:
            return [name for _, name in sorted(zip(indexed, names, strict=True))]
        arguments = _forward_argument_names(self.module)
        if sorted(arguments) == sorted(names):
            return arguments
        return names

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timings]:
        start = time.perf_counter_ns()
        if self._strings:
            tensors = [self._argument(name, inputs[name]) for name in self._argument_order]
        else:
            tensors = [torch.from_numpy(inputs[name]).to(self.device) for name in self._argument_order]
        ready = time.perf_counter_ns()
        with torch.inference_mode():
            result = self.module(*tensors)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        computed = time.perf_counter_ns()
        if isinstance(result, (torch.Tensor, list)):  # one output: a tensor or a List[str]
            result = (result,)
        if len(result) <= max(self._output_index):
            raise RuntimeError(
                f"model returned {len(result)} outputs, config.pbtxt declares {len(self._outputs)}"
            )
        outputs = {}
        for (name, dtype), index in zip(self._outputs, self._output_index, strict=True):
            value = result[index]
            if dtype is OBJECT or not isinstance(value, torch.Tensor):
                outputs[name] = _strings_output(name, value, dtype)
                continue
            array = value.detach().cpu().numpy()
            if array.dtype != dtype:  # as the backend: never a cast (INT64 to INT8 would wrap)
                raise TypeError(
                    f"model returned output '{name}' as {_datatype(array.dtype)}, "
                    f"config.pbtxt declares {_datatype(dtype)}"
                )
            outputs[name] = array
        done = time.perf_counter_ns()
        return outputs, Timings(ready - start, computed - ready, done - computed)

    def _argument(self, name: str, array: np.ndarray) -> torch.Tensor | list[str]:
        if name in self._strings:
            return array.reshape(-1).tolist()  # 1-D (admission.py): List[str], as the backend passes it
        return torch.from_numpy(array).to(self.device)


def _strings_output(name: str, value: object, dtype: np.dtype) -> np.ndarray:
    """A List[str] output as BYTES (each string's UTF-8 bytes); anything else where the config
    declares BYTES, or a list where it declares a tensor, is refused as the backend refuses it."""
    if dtype is OBJECT and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return as_array([v.encode() for v in value])
    returned = "List[str]" if isinstance(value, list) else type(value).__name__
    if isinstance(value, torch.Tensor):
        returned = _datatype(value.detach().cpu().numpy().dtype)
    raise TypeError(f"model returned output '{name}' as {returned}, config.pbtxt declares {_datatype(dtype)}")


def _datatype(dtype: np.dtype) -> str:
    return DATATYPE_BY_NUMPY.get(dtype, str(dtype))


def concatenate(requests: list[Arrays]) -> Arrays:
    """Dynamically batched requests as one input batch along dim 0."""
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split_batch(outputs: Arrays, sizes: list[int], batched: bool) -> list[Arrays]:
    """Each request's rows; a batched model's outputs must carry the batch as dim 0 (as in Triton)."""
    if not batched:
        return [outputs]
    total = sum(sizes)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"model returned output '{name}' of shape {list(array.shape)} for a batch of {total}; "
                "with max_batch_size > 0 every output needs the batch as its first dimension"
            )
    if len(sizes) == 1:
        return [outputs]
    pieces = {name: np.split(array, np.cumsum(sizes)[:-1]) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(sizes))]
