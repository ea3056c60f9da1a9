"""A loaded model version as both Triton callers send requests to it: names and datatypes
resolved once, for every request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.repository import ModelSignature

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelCall:
    """A loaded model version's names and datatypes, resolved once for every request."""

    name: str
    version: int
    input_types: Mapping[str, Any]  # input name → TRITONSERVER_DataType (enum or its int)
    output_dtypes: Mapping[str, np.dtype]

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
        )
