"""Triton datatypes: config enum ("TYPE_FP32") ↔ wire name ("FP32") ↔ numpy dtype."""

from __future__ import annotations

import numpy as np

from serve_app.errors import InvalidInputError

# Every Triton datatype but BF16 (numpy has no such dtype): BYTES tensors are object arrays of
# `bytes` (serve_app/bytes_tensors.py).
NUMPY_BY_DATATYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

DATATYPE_BY_NUMPY: dict[np.dtype, str] = {v: k for k, v in NUMPY_BY_DATATYPE.items()}


def from_config_type(config_type: str) -> str:
    """`TYPE_FP32` (model_config_pb2.DataType name) → `FP32`; `TYPE_STRING` → `BYTES`."""
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a wire datatype, or a 400 naming the supported ones."""
    try:
        return NUMPY_BY_DATATYPE[datatype]
    except KeyError:
        supported = ", ".join(NUMPY_BY_DATATYPE)
        raise InvalidInputError(f"unsupported datatype '{datatype}'; supported: {supported}") from None
