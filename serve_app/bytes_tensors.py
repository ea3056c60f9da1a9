"""BYTES tensors: numpy object arrays of `bytes`, and Triton's wire format for them.

On the wire (HTTP binary data, gRPC `raw_input_contents`/`raw_output_contents`, Triton's C API)
a BYTES tensor is its elements in row-major order, each a 4-byte little-endian length followed by
that many bytes. In between, every layer holds one as a numpy array of dtype object whose elements
are `bytes`, the form tritonclient gives and takes.

What a BYTES tensor makes a replica hold is more than its bytes: each element is a Python object
and a pointer in the array. `held_bytes` counts that, so that the request's byte budget bounds the
elements of a BYTES tensor as it bounds the elements of any other.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Iterable

import numpy as np

from serve_app.errors import InternalError, InvalidInputError

OBJECT = np.dtype(object)
# One element's cost beyond its bytes: the array's pointer and an empty `bytes` object.
ELEMENT_HELD = OBJECT.itemsize + sys.getsizeof(b"")
_LENGTH = struct.Struct("<I")


def held_bytes(array: np.ndarray) -> int:
    """What an array makes the server hold: its buffer, and for BYTES its elements too."""
    if array.dtype is not OBJECT:
        return array.nbytes
    return array.size * ELEMENT_HELD + sum(len(value) for value in array.flat)


def serialize(values: Iterable[bytes]) -> bytes:
    """Triton's wire format of BYTES elements (row-major: pass `array.flat`)."""
    parts = []
    for value in values:
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


class _Malformed(Exception):
    """A length prefix that does not fit: `prefix` when the prefix itself is cut short."""

    def __init__(self, prefix: bool, wanted: int, available: int) -> None:
        super().__init__(prefix, wanted, available)
        self.prefix, self.wanted, self.available = prefix, wanted, available


def _elements(buffer: bytes | memoryview, limit: int) -> np.ndarray:
    """At most `limit` elements of Triton's wire format (1-D), never a read past the end."""
    view = memoryview(buffer).cast("B")
    values: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end and len(values) < limit:
        if end - offset < _LENGTH.size:
            raise _Malformed(True, _LENGTH.size, end - offset)
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > end - offset:
            raise _Malformed(False, length, end - offset)
        values.append(bytes(view[offset : offset + length]))
        offset += length
    return as_array(values)


def deserialize(buffer: bytes | memoryview, limit: int, name: str, model: str) -> np.ndarray:
    """An input's elements in Triton's wire format, at most `limit` of them (1-D, dtype object).

    A buffer that holds more elements stops at `limit`, as Triton's check stops one past the
    count a shape needs; the caller compares the count with the shape. A length prefix that does
    not fit what is left is a 400 with Triton's text.
    """
    try:
        return _elements(buffer, limit)
    except _Malformed as bad:
        if bad.prefix:
            raise InvalidInputError(
                f"incomplete string length indicator for inference input '{name}' for model '{model}', "
                f"expecting {bad.wanted} bytes but only {bad.available} bytes available. Please make sure "
                "the string length indicator is in one buffer."
            ) from None
        raise InvalidInputError(
            f"incomplete string data for inference input '{name}', expecting string of length {bad.wanted} "
            f"but only {bad.available} bytes available"
        ) from None


def deserialize_output(buffer: bytes | memoryview, shape: Iterable[int], name: str) -> np.ndarray:
    """A BYTES output as a backend returned it, in its shape; one that does not fill its shape
    exactly is the backend's fault (500)."""
    shape = tuple(shape)
    count = math.prod(shape)
    try:
        values = _elements(buffer, count + 1)
    except _Malformed as bad:
        raise InternalError(
            f"output '{name}' holds a string element whose length ({bad.wanted}) runs past its data"
        ) from None
    if values.size != count or sum(len(v) + _LENGTH.size for v in values.flat) != len(buffer):
        raise InternalError(
            f"output '{name}' does not hold the {count} string elements of its shape {list(shape)}"
        )
    return values.reshape(shape)


def as_array(values: list[bytes]) -> np.ndarray:
    """A 1-D object array of these elements (np.array would make a fixed-width bytes array)."""
    array = np.empty(len(values), OBJECT)
    array[:] = values
    return array


def element_count_error(name: str, model: str, expected: int, found: int) -> InvalidInputError:
    """Triton's answer to a BYTES input whose elements do not fill its shape (`found` stops at
    one past `expected`, where Triton's check stops)."""
    if found > expected:
        return InvalidInputError(
            f"unexpected number of string elements {expected + 1} for inference input '{name}' for model "
            f"'{model}', expecting {expected}"
        )
    return InvalidInputError(
        f"expected {expected} string elements for inference input '{name}' for model '{model}', got {found}"
    )
