"""Triton's checks of an inference request against a model, in Triton's order, with its texts.

Everything a request names (inputs, their datatypes, shapes and batch size, outputs, parameters)
is checked against the model's signature before any model runs, so a bad request is a 400 of its
own and never reaches a batch; a raw binary request (the body is the model's one input) is shaped
here, once the signature is known.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from serve_app.bytes_tensors import OBJECT, as_array, element_count_error
from serve_app.datatypes import numpy_dtype
from serve_app.errors import InvalidInputError, load_not_polled
from serve_app.infer_types import InferRequest, InputTensor, RequestedOutput
from serve_app.repository import ModelEntryError, ModelSignature, TensorSpec, config_override
from serve_app.runtimes.base import NO_OPTIONS, InferOptions, LoadParameters

# Request parameters Triton schedules by (KServe v2 names), and the types each takes.
_SCHEDULING_PARAMETERS: dict[str, tuple[type, ...]] = {
    "priority": (int,),
    "timeout": (int,),
    "sequence_id": (int, str),
    "sequence_start": (bool,),
    "sequence_end": (bool,),
}
_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string"}


class Expected:
    """What a model version takes and returns, indexed once per signature for every request's checks."""

    def __init__(self, signature: ModelSignature) -> None:
        self.signature = signature
        self.inputs = {t.name: t for t in signature.inputs}
        self.required = tuple(t.name for t in signature.inputs if not t.optional)
        self.has_optional = len(self.required) != len(self.inputs)
        self.bytes_inputs = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")
        self.output_names = [t.name for t in signature.outputs]
        self.output_set = frozenset(self.output_names)
        # Every output in model order (a request that names none), binary or not.
        self.every_output = {
            binary: tuple(RequestedOutput(name, binary) for name in self.output_names)
            for binary in (False, True)
        }


def infer_options(parameters: dict[str, Any]) -> InferOptions:
    """Request parameters → scheduling options; a value of the wrong type is refused."""
    if not parameters:
        return NO_OPTIONS  # the runtimes skip applying the defaults
    scheduling: dict[str, Any] = {}
    others: list[tuple[str, str | int | float | bool]] = []
    for key, value in parameters.items():
        types = _SCHEDULING_PARAMETERS.get(key)
        if types is None:
            if not isinstance(value, (str, int, float, bool)):
                raise InvalidInputError(
                    f"request parameter '{key}' must be a string, number or boolean, "
                    f"not {type(value).__name__}"
                )
            others.append((key, value))
            continue
        # bool is an int in Python; Triton's JSON types keep them apart.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            names = " or ".join(_TYPE_NAMES[t] for t in types)
            raise InvalidInputError(f"request parameter '{key}' must be {names}, not {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < 2**64:
            raise InvalidInputError(f"request parameter '{key}' must be between 0 and 2**64 - 1")
        scheduling[key] = value
    return InferOptions(
        priority=scheduling.get("priority", 0),
        timeout_us=scheduling.get("timeout", 0),
        sequence_id=scheduling.get("sequence_id", 0),
        sequence_start=scheduling.get("sequence_start", False),
        sequence_end=scheduling.get("sequence_end", False),
        parameters=tuple(others),
    )


def load_parameters(model: str, parameters: dict[str, Any]) -> LoadParameters:
    """A load's parameters as Triton reads them: `config`, the JSON of a model configuration that
    replaces config.pbtxt for this load, checked here so that one that does not parse changes
    nothing. File overrides (`file:<path>`) are refused: the repository holds the model's files."""
    for key, value in parameters.items():
        if key.startswith("file:"):
            raise InvalidInputError(
                f"load parameter '{key}': file overrides are not supported by this server; "
                "put the model's files in the repository and load it"
            )
        if key != "config":
            raise load_not_polled(model, f"Unrecognized load parameter '{key}'")
        if not isinstance(value, str):
            raise InvalidInputError(
                f"load parameter 'config' must be a string (the JSON of a model configuration), "
                f"not {type(value).__name__}"
            )
        try:
            config_override(model, value)
        except ModelEntryError as exc:
            raise load_not_polled(model, str(exc)) from None
    return dict(parameters)


def _dims(dims: Sequence[int]) -> str:
    """Triton's rendering of a shape: [1,16]."""
    return "[" + ",".join(map(str, dims)) + "]"


def _names(names: Sequence[str]) -> str:
    """Triton's rendering of input names: ['INPUT0','INPUT1']."""
    return "[" + ",".join(f"'{name}'" for name in names) + "]"


def resolve_raw_input(request: InferRequest, signature: ModelSignature) -> InferRequest:
    """A raw binary request's body as the model's one input (Triton's rules and texts); others
    pass through.

    The model must have exactly one input with at most one variable dimension, which the
    byte count decides; a batching model gets a batch of 1. A BYTES input must have shape [1]:
    the body is its one element.
    """
    raw = request.raw_input
    if raw is None:
        return request
    if len(signature.inputs) != 1:
        raise InvalidInputError(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(signature.inputs)} "
            f"inputs in '{signature.name}' model configuration"
        )
    [spec] = signature.inputs
    dtype = numpy_dtype(spec.datatype)
    dims = list(spec.dims)
    variable = [i for i, dim in enumerate(dims) if dim == -1]
    if len(variable) > 1:
        raise InvalidInputError(
            f"The shape of the raw input '{spec.name}' can not be deduced because there are more than "
            "one variable-sized dimension"
        )
    batch = (1,) if signature.max_batch_size > 0 else ()
    if dtype is OBJECT:
        if variable or math.prod(dims) != 1:
            raise InvalidInputError(
                f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]"
            )
        shape = (*batch, *dims)
        tensor = InputTensor(spec.name, spec.datatype, shape, as_array([bytes(raw)]).reshape(shape))
        return dataclasses.replace(request, inputs=[tensor], raw_input=None)
    element_bytes = math.prod(dim for dim in dims if dim != -1) * dtype.itemsize
    if variable:
        # As Triton: a size that does not divide is refused below, with the byte counts.
        dims[variable[0]] = len(raw) // element_bytes if element_bytes else 0
    if math.prod(dims) * dtype.itemsize != len(raw):
        raise InvalidInputError(
            f"input byte size mismatch for input '{spec.name}' for model '{signature.name}'. "
            f"Expected {math.prod(dims) * dtype.itemsize}, got {len(raw)}"
        )
    shape = (*batch, *dims)
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return dataclasses.replace(
        request, inputs=[InputTensor(spec.name, spec.datatype, shape, array)], raw_input=None
    )


def validate_inputs(expected: Expected, inputs: list[InputTensor]) -> dict[str, np.ndarray]:
    """Check the inputs against the model as Triton does, with Triton's texts; 400 on mismatch.

    Triton checks a request's inputs in the order of its map of them, which for a request's few
    inputs is the last one first: so do these checks, so that of two wrong inputs the same one
    is named.
    """
    signature = expected.signature
    if not len(expected.required) <= len(inputs) <= len(expected.inputs):
        _refuse_input_count(expected, inputs)
    arrays: dict[str, np.ndarray] = {}
    batch = 0
    for tensor in reversed(inputs):
        spec = expected.inputs.get(tensor.name)
        if spec is None:
            raise InvalidInputError(
                f"unexpected inference input '{tensor.name}' for model '{signature.name}'"
            )
        if tensor.name in arrays:
            raise InvalidInputError(f"input '{tensor.name}' already exists in request")
        if tensor.datatype != spec.datatype:
            raise InvalidInputError(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{signature.name}' expects '{spec.datatype}'"
            )
        size = _check_shape(signature, spec, tensor.shape)
        if batch and size != batch:
            raise InvalidInputError(
                f"input '{tensor.name}' batch size does not match other inputs for '{signature.name}'"
            )
        batch = size
        if expected.bytes_inputs and tensor.name in expected.bytes_inputs:
            arrays[tensor.name] = _bytes_array(signature, tensor)
        else:
            arrays[tensor.name] = tensor.array
    if expected.has_optional and any(name not in arrays for name in expected.required):
        _refuse_input_count(expected, inputs)
    return arrays


def _bytes_array(signature: ModelSignature, tensor: InputTensor) -> np.ndarray:
    """A BYTES input's elements (flat, as the codecs give them) in its shape, once their count is
    the shape's: Triton's check, and its texts."""
    count = math.prod(tensor.shape)
    if tensor.array.size != count:
        raise element_count_error(tensor.name, signature.name, count, tensor.array.size)
    return tensor.array.reshape(tensor.shape)


def _refuse_input_count(expected: Expected, inputs: list[InputTensor]) -> None:
    """Triton's answer to a request without every required input (or with more than the model has)."""
    given = list(dict.fromkeys(t.name for t in reversed(inputs)))  # Triton's order; duplicates once
    if len(given) != len(inputs):
        duplicate = next(t.name for t in inputs if sum(u.name == t.name for u in inputs) > 1)
        raise InvalidInputError(f"input '{duplicate}' already exists in request")
    missing = [name for name in expected.required if name not in given]
    count = (
        f"expected {len(expected.inputs)} inputs"
        if not expected.has_optional
        else f"expected number of inputs between {len(expected.required)} and {len(expected.inputs)}"
    )
    raise InvalidInputError(
        f"{count} but got {len(given)} inputs for model '{expected.signature.name}'. Got input(s) "
        f"{_names(given)}, but missing required input(s) {_names(missing)}. Please provide all "
        "required input(s)."
    )


# Triton's note on a shape that does not fit a batching model.
_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be "
    "prepended to each input shape. If you want to specify the full shape including the batch dim "
    "in your input dims config, try setting max_batch_size to zero. See the model configuration "
    "docs for more info on max_batch_size."
)


def _check_shape(signature: ModelSignature, spec: TensorSpec, shape: tuple[int, ...]) -> int:
    """Returns the batch size (1 for models without batching)."""
    dims = shape
    batch = 1
    if signature.max_batch_size > 0:
        if not shape:
            raise InvalidInputError(
                f"input '{spec.name}' has no shape but model requires batch dimension for '{signature.name}'"
            )
        batch, dims = shape[0], shape[1:]
        if batch > signature.max_batch_size:
            raise InvalidInputError(
                f"inference request batch-size must be <= {signature.max_batch_size} for '{signature.name}'"
            )
        if batch < 1:  # Triton would run an empty batch; serve_app refuses it
            raise InvalidInputError(
                f"inference request batch-size 0 of input '{spec.name}' for '{signature.name}' is not "
                f"between 1 and max_batch_size {signature.max_batch_size}"
            )
    if not _fits(spec.dims, dims):
        if signature.max_batch_size > 0:
            expected, note = [-1, *spec.dims], _BATCH_NOTE
        else:
            expected, note = list(spec.dims), ""
        raise InvalidInputError(
            f"unexpected shape for input '{spec.name}' for model '{signature.name}'. Expected "
            f"{_dims(expected)}, got {_dims(shape)}. {note}".rstrip()
        )
    return batch


def _fits(spec_dims: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    """`dims` fits `spec_dims`, where -1 takes any size (without one, tuples compare at C speed)."""
    if -1 not in spec_dims:
        return dims == spec_dims
    return len(dims) == len(spec_dims) and all(e in (-1, d) for e, d in zip(spec_dims, dims, strict=True))


def requested_outputs(expected: Expected, request: InferRequest) -> Sequence[RequestedOutput]:
    """The outputs to return (all of them in model order when none are named)."""
    if request.outputs is None:
        return expected.every_output[request.binary_output]
    for output in request.outputs:
        if output.name not in expected.output_set:
            raise InvalidInputError(
                f"unexpected inference output '{output.name}' for model '{expected.signature.name}'"
            )
    return request.outputs
