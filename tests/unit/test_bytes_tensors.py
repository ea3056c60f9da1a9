"""Triton's wire format of BYTES tensors, against tritonclient's own (de)serialization, and what a
BYTES tensor makes the server hold."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from serve_app.bytes_tensors import (
    ELEMENT_HELD,
    as_array,
    deserialize,
    deserialize_output,
    element_count_error,
    held_bytes,
    serialize,
)
from serve_app.errors import InternalError, InvalidInputError

VALUES = [b"", b"a", b"\x00\xff" * 300, "żółw".encode(), b"\x01\x00\x00\x00"]


def test_serialize_is_tritonclients_format() -> None:
    array = as_array(VALUES)
    assert serialize(array.flat) == serialize_byte_tensor(array).item()
    assert deserialize_bytes_tensor(serialize(array.flat)).tolist() == VALUES


def test_deserialize_reads_tritonclients_format_and_stops_one_past_the_limit() -> None:
    wire = serialize_byte_tensor(as_array(VALUES)).item()
    assert deserialize(wire, len(VALUES) + 1, "x", "m").tolist() == VALUES
    assert deserialize(wire, 2, "x", "m").tolist() == VALUES[:2]
    assert deserialize(b"", 3, "x", "m").shape == (0,)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (
            b"\x01\x00\x00",
            "incomplete string length indicator for inference input 'x' for model 'm', expecting 4 bytes "
            "but only 3 bytes available. Please make sure the string length indicator is in one buffer.",
        ),
        (
            b"\x00\x00\x00\x00\x09\x00\x00\x00abc",
            "incomplete string data for inference input 'x', expecting string of length 9 but only 3 bytes "
            "available",
        ),
    ],
)
def test_a_prefix_that_does_not_fit_is_tritons_400(wire: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        deserialize(wire, 10, "x", "m")
    assert str(raised.value) == message


def test_an_output_must_fill_its_shape_exactly() -> None:
    wire = serialize(VALUES[:4])
    assert deserialize_output(wire, (2, 2), "y").tolist() == [VALUES[:2], VALUES[2:4]]
    for shape in ((3,), (5,)):
        with pytest.raises(InternalError, match="does not hold the"):
            deserialize_output(wire, shape, "y")
    with pytest.raises(InternalError, match="runs past its data"):
        deserialize_output(wire[:-1], (4,), "y")


def test_held_bytes_counts_each_element_and_its_bytes() -> None:
    assert held_bytes(np.zeros(4, np.float32)) == 16
    assert held_bytes(as_array([b"ab", b""])) == 2 * ELEMENT_HELD + 2


def test_element_count_texts_are_tritons() -> None:
    assert str(element_count_error("x", "m", 4, 2)) == (
        "expected 4 string elements for inference input 'x' for model 'm', got 2"
    )
    assert str(element_count_error("x", "m", 4, 9)) == (
        "unexpected number of string elements 5 for inference input 'x' for model 'm', expecting 4"
    )
