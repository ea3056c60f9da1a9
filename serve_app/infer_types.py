"""The transport-free request and response, and the tensor rules both codecs apply.

`http_codec` (JSON and binary bodies) and `grpc_codec` (Triton's gRPC messages) decode into
these types through the same rules (bounded shapes, refused extension parameters, output
flags), so both wire formats accept the same requests; everything about the model (names,
datatypes, shapes) is the dataplane's to check. Everything a request makes the server hold is
bounded by `Limits` before it is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.errors import InvalidInputError, PayloadTooLargeError

# A request body as the HTTP layer holds it: one buffer, never chunks.
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Limits:
    """What one request may make a replica hold, each refused before anything is allocated."""

    max_bytes: int  # the body, the body decompressed, and all input tensors together (413)
    max_tensors: int = 1024  # inputs in a request, and outputs it names (400)
    max_dims: int = 32  # dimensions of a shape: numpy's limit; Triton's is larger, numpy cannot hold it


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded request: numpy arrays keyed by input name, transport-free."""

    model_name: str
    model_version: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None  # None: all outputs
    binary_output: bool = False  # default for outputs not listed explicitly
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    raw_input: memoryview | None = None  # a raw binary request's body, until the dataplane shapes it


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[tuple[RequestedOutput, np.ndarray]]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    # On-demand placement: seconds this request waited for its model to load (0.0: a hit).
    model_load_s: float = 0.0


# Tensor parameters of Triton extensions this server does not implement, and the extension.
_UNSUPPORTED_EXTENSIONS = {
    "shared_memory_region": "shared-memory",
    "shared_memory_offset": "shared-memory",
    "shared_memory_byte_size": "shared-memory",
    "classification": "classification",
}


def tensor_parameters(kind: str, name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A tensor's parameters, refusing any that would have it answered from elsewhere."""
    if not parameters:
        return {}
    for key in parameters:
        extension = _UNSUPPORTED_EXTENSIONS.get(key)
        if extension is not None:
            raise InvalidInputError(
                f"{kind} '{name}': parameter '{key}' is Triton's {extension} extension, "
                "which this server does not support"
            )
    return parameters


def flag(value: object, what: str) -> bool:
    """A boolean parameter's value, refused when of another type (1 and "true" are not booleans)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be a boolean, not {type(value).__name__}")
    return value


def requested_output(name: str, parameters: dict[str, Any] | None, binary_default: bool) -> RequestedOutput:
    """An output a request names, with its parameters (binary_data only)."""
    parameters = tensor_parameters("output", name, parameters)
    unsupported = [key for key in parameters if key != "binary_data"]
    if unsupported:
        raise InvalidInputError(f"output '{name}': unsupported parameters {sorted(unsupported)}")
    binary = parameters.get("binary_data", binary_default)
    return RequestedOutput(name, flag(binary, f"output '{name}' parameter 'binary_data'"))


def element_count(
    name: str, datatype: str, shape: Sequence[int], itemsize: int, budget: int, limits: Limits
) -> int:
    """The elements a tensor of this shape holds, refused before they are allocated if out of bounds."""
    if len(shape) > limits.max_dims:
        raise InvalidInputError(
            f"input '{name}' has {len(shape)} dimensions; at most {limits.max_dims} are supported"
        )
    if shape and min(shape) < 0:
        raise InvalidInputError(f"input '{name}' has a negative dimension in {shape}")
    count = math.prod(shape)
    # An empty tensor's other dims count too: numpy cannot shape [0, 2**63] either.
    if count * itemsize > budget or (not count and math.prod(d or 1 for d in shape) * itemsize > budget):
        raise PayloadTooLargeError(
            f"input '{name}' of shape {shape} ({datatype}) would exceed the request's "
            f"{limits.max_bytes}-byte limit on tensor data"
        )
    return count
