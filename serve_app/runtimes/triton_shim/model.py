"""Triton python-backend model that serves a TorchScript file the way Triton's PyTorch backend does.

Triton builds without the PyTorch backend (the CPU core from nvidia-pytriton) load this file
as ``model.py`` through load overrides (``serve_app.triton_cpu.torchscript_load_parameters``),
so ``pytorch_libtorch`` repositories are served unchanged. The backend stub runs the Python of
the first ``python3`` on PATH, the replica's environment, so serve_app imports here: the model
is called by the torch runtime's ``TorchScriptModel`` and both runtimes compute the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.errors import summarize
from serve_app.repository import ModelSignature
from serve_app.runtimes.torchscript import TorchScriptModel, concatenate, split_batch
from serve_app.triton_cpu import (
    TORCH_THREADS_PARAMETER,
    TORCHSCRIPT_DIR_PARAMETER,
    TORCHSCRIPT_FILENAME_PARAMETER,
)

Arrays = dict[str, np.ndarray]
# Requests of one execute() that share a forward: (position in the call, inputs).
Group = list[tuple[int, Arrays]]


class TritonPythonModel:
    """One TorchScript module per model instance; runs each ``execute`` call as few forwards as it can."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        if parameters.get(TORCH_THREADS_PARAMETER):
            torch.set_num_threads(int(parameters[TORCH_THREADS_PARAMETER]))
        model_dir = Path(parameters.get(TORCHSCRIPT_DIR_PARAMETER) or args["model_repository"])
        filename = parameters.get(TORCHSCRIPT_FILENAME_PARAMETER) or "model.pt"
        on_gpu = args["model_instance_kind"] == "GPU" and torch.cuda.is_available()
        signature = ModelSignature.from_config(config)
        self._batching = signature.max_batch_size > 0
        self._model = TorchScriptModel(
            model_dir / args["model_version"] / filename,
            [t.name for t in signature.inputs],
            [t.name for t in signature.outputs],
            [NUMPY_BY_DATATYPE[t.datatype] for t in signature.outputs],
            torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu"),
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer every request; with batching, requests of equal non-batch shapes share one forward."""
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[Any, ...], Group] = {}
        for position, request in enumerate(requests):
            arrays = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self._model.input_names
            }
            key = (
                tuple((name, array.dtype.str, array.shape[1:]) for name, array in arrays.items())
                if self._batching
                else (position,)
            )
            groups.setdefault(key, []).append((position, arrays))
        for group in groups.values():
            self._respond(group, responses)
        return responses

    def _respond(self, group: Group, responses: list[Any]) -> None:
        """Run the group as one forward; if that fails, rerun its requests alone so only bad ones fail."""
        try:
            outputs, _ = self._model(concatenate([arrays for _, arrays in group]))
            sizes = [len(next(iter(arrays.values()))) for _, arrays in group]
            pieces = split_batch(outputs, sizes, self._batching)
        except Exception as exception:  # noqa: BLE001 - becomes the requests' errors, as in the torch runtime
            if len(group) > 1:
                for member in group:
                    self._respond([member], responses)
                return
            error = pb_utils.TritonError(f"model execution failed: {summarize(exception)}")
            responses[group[0][0]] = pb_utils.InferenceResponse(error=error)
            return
        for (position, _), piece in zip(group, pieces, strict=True):
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in piece.items()]
            responses[position] = pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        on_gpu = self._model.device.type == "cuda"
        del self._model
        if on_gpu:
            torch.cuda.empty_cache()
