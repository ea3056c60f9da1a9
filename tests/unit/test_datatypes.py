"""The datatype table: Triton's wire names, config names and numpy dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from serve_app.datatypes import DATATYPE_BY_NUMPY, NUMPY_BY_DATATYPE, from_config_type, numpy_dtype
from serve_app.errors import InvalidInputError


def test_datatype_table_covers_tritons_types_both_ways() -> None:
    """Every Triton datatype but BF16, which numpy has no dtype for; BYTES as object arrays."""
    assert set(NUMPY_BY_DATATYPE) == {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
    for datatype, dtype in NUMPY_BY_DATATYPE.items():
        assert DATATYPE_BY_NUMPY[dtype] == datatype
        assert numpy_dtype(datatype) == dtype
        # Triton's own client agrees on every mapping.
        assert np.dtype(httpclient.triton_to_np_dtype(datatype)) == dtype


def test_config_types_map_to_wire_names() -> None:
    assert from_config_type("TYPE_FP32") == "FP32"
    assert from_config_type("TYPE_BOOL") == "BOOL"
    assert from_config_type("TYPE_STRING") == "BYTES"


@pytest.mark.parametrize("datatype", ["BF16", "FLOAT32", "fp32"])
def test_unsupported_datatypes_are_a_400_listing_the_supported_ones(datatype: str) -> None:
    with pytest.raises(InvalidInputError, match=f"unsupported datatype '{datatype}'; supported: BOOL"):
        numpy_dtype(datatype)
