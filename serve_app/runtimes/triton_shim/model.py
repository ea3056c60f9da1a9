"""Triton python-backend model that serves a TorchScript file like Triton's PyTorch backend.

Triton builds without the PyTorch backend (the CPU core from nvidia-pytriton) load this
file as ``model.py`` through load overrides (``serve_app.triton_cpu.torchscript_load_parameters``),
so ``platform: "pytorch_libtorch"`` repositories are served unchanged. It runs inside the
python backend stub, so it imports only torch, numpy and the backend's utilities.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

# Injected by serve_app.triton_cpu.torchscript_load_parameters (same names there).
MODEL_DIR_PARAMETER = "torchscript_model_dir"
FILENAME_PARAMETER = "torchscript_filename"

_INDEXED_NAME = re.compile(r"^.+__(\d+)$")


def _index(name: str) -> int | None:
    """Index of a PyTorch-backend style name such as ``INPUT__0``."""
    match = _INDEXED_NAME.match(name)
    return int(match.group(1)) if match else None


def _error(exception: Exception) -> Any:
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"{type(exception).__name__}: {exception}")
    )


class TritonPythonModel:
    """Runs one TorchScript module per model instance; batches a whole ``execute`` call at once."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: value["string_value"] for key, value in config.get("parameters", {}).items()
        }
        model_dir = Path(parameters.get(MODEL_DIR_PARAMETER) or args["model_repository"])
        filename = parameters.get(FILENAME_PARAMETER) or "model.pt"
        on_gpu = args["model_instance_kind"] == "GPU" and torch.cuda.is_available()
        self._device = torch.device(
            f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu"
        )
        self._module = torch.jit.load(
            str(model_dir / args["model_version"] / filename), map_location=self._device
        ).eval()
        self._batching = int(config.get("max_batch_size", 0)) > 0
        self._inputs, self._positional = self._input_binding(
            [tensor["name"] for tensor in config.get("input", [])]
        )
        self._outputs = []
        for position, tensor in enumerate(config.get("output", [])):
            data_type = tensor["data_type"]
            if data_type not in pb_utils.TRITON_STRING_TO_NUMPY or data_type == "TYPE_STRING":
                raise ValueError(f"output {tensor['name']}: {data_type} is not supported")
            index = _index(tensor["name"])
            self._outputs.append(
                (
                    tensor["name"],
                    position if index is None else index,
                    np.dtype(pb_utils.triton_string_to_numpy(data_type)),
                )
            )

    def _input_binding(self, names: list[str]) -> tuple[list[str], bool]:
        """Order inputs as the PyTorch backend does: by ``__<index>``, else by forward() name."""
        indices = [_index(name) for name in names]
        if names and None not in indices:
            if sorted(indices) != list(range(len(names))):
                raise ValueError(f"input indices of {names} must be 0..{len(names) - 1}")
            return sorted(names, key=_index), True
        arguments = [argument.name for argument in self._module.forward.schema.arguments[1:]]
        unknown = sorted(set(names) - set(arguments))
        if unknown:
            raise ValueError(
                f"inputs {unknown} follow neither the <name>__<index> convention nor the "
                f"forward() arguments {arguments}"
            )
        return names, False

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for position, request in enumerate(requests):
            try:
                arrays = self._read_inputs(request)
            except Exception as exception:  # noqa: BLE001 - becomes this request's error
                responses[position] = _error(exception)
                continue
            key: tuple[Any, ...] = (position,)
            if self._batching:
                key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in arrays.items())
            groups.setdefault(key, []).append((position, arrays))
        for members in groups.values():
            for position, response in self._run_group(members):
                responses[position] = response
        return responses

    def _read_inputs(self, request: Any) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self._inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensor.as_numpy()
            elif self._positional:
                raise ValueError(f"input {name} is required")
        return arrays

    def _run_group(
        self, members: list[tuple[int, dict[str, np.ndarray]]]
    ) -> list[tuple[int, Any]]:
        """One forward for the whole group; on failure retry alone so only bad requests fail."""
        try:
            sizes = [len(next(iter(arrays.values()), ())) for _, arrays in members]
            outputs = self._forward(
                {
                    name: np.concatenate([arrays[name] for _, arrays in members])
                    for name in members[0][1]
                }
                if len(members) > 1
                else members[0][1]
            )
            parts = [
                np.split(array, np.cumsum(sizes)[:-1]) if len(members) > 1 else [array]
                for array in outputs
            ]
            return [
                (
                    position,
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(name, np.ascontiguousarray(part[member]))
                            for (name, _, _), part in zip(self._outputs, parts)
                        ]
                    ),
                )
                for member, (position, _) in enumerate(members)
            ]
        except Exception as exception:  # noqa: BLE001 - becomes the requests' errors
            if len(members) == 1:
                return [(members[0][0], _error(exception))]
            return [result for member in members for result in self._run_group([member])]

    def _forward(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the module and return the configured outputs as numpy arrays."""
        tensors = {name: torch.from_numpy(np.array(a)).to(self._device) for name, a in arrays.items()}
        with torch.inference_mode():
            if self._positional:
                result = self._module(*(tensors[name] for name in self._inputs))
            else:
                result = self._module(**tensors)
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        batch = len(next(iter(arrays.values()), ()))
        outputs = []
        for name, index, dtype in self._outputs:
            if index >= len(results) or not isinstance(results[index], torch.Tensor):
                raise ValueError(f"output {name}: forward() returned no tensor at index {index}")
            array = results[index].detach().cpu().numpy()
            if array.dtype != dtype:
                raise TypeError(f"output {name}: forward() returned {array.dtype}, config says {dtype}")
            if self._batching and (array.ndim == 0 or array.shape[0] != batch):
                raise ValueError(f"output {name}: batch dimension {array.shape[:1]} != {batch}")
            outputs.append(array)
        return outputs

    def finalize(self) -> None:
        del self._module
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
