"""A loaded model version as both Triton callers send requests to it: names and datatypes
resolved once, for every request, and its BYTES inputs in Triton's wire format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.bytes_tensors import serialize
from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.repository import ModelSignature

Outputs = dict[str, np.ndarray]
# What a caller hands Triton for one input: an array it reads as it is, or for BYTES the
# serialized elements (uint8) and the tensor's shape.
Input = np.ndarray | tuple[np.ndarray, tuple[int, ...]]


@dataclass(frozen=True)
class ModelCall:
    """A loaded model version's names and datatypes, resolved once for every request."""

    name: str
    version: int
    input_types: Mapping[str, Any]  # input name → TRITONSERVER_DataType (enum or its int)
    output_dtypes: Mapping[str, np.dtype]
    bytes_inputs: frozenset[str] = frozenset()

    @classmethod
    def build(cls, name: str, version: int, signature: ModelSignature, types: Mapping[str, Any]) -> ModelCall:
        """`types`: wire datatype name → the caller's Triton datatype value."""
        return cls(
            name,
            version,
            {t.name: types[t.datatype] for t in signature.inputs},
            {
                t.name: np.dtype(NUMPY_BY_DATATYPE[t.datatype])
                for t in signature.outputs
                if t.datatype in NUMPY_BY_DATATYPE
            },
            frozenset(t.name for t in signature.inputs if t.datatype == "BYTES"),
        )

    def inputs(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Input]:
        """The request's inputs as Triton reads them: from their data pointers, ignoring strides
        (so C-contiguous), and BYTES serialized."""
        if not self.bytes_inputs:
            return {name: np.ascontiguousarray(array) for name, array in arrays.items()}
        return {
            name: (_serialized(array), array.shape)
            if name in self.bytes_inputs
            else np.ascontiguousarray(array)
            for name, array in arrays.items()
        }


def _serialized(array: np.ndarray) -> np.ndarray:
    return np.frombuffer(serialize(array.flat), np.uint8)
