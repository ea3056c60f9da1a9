"""qa/L0_infer_zero/infer_zero_test.py (r24.10), InferZeroTest, on libtorch (`BACKENDS=libtorch`):
identity models with tensors of zero elements, batch 1 and 8 to `libtorch_zero_*`, no batch to
`libtorch_nobatch_zero_*`.

QA's `_full_zero` returns before any libtorch request for FP16 (validate_for_libtorch_model) and
for strings ("object models do not exist right now for PyTorch"), so the hh* and oo* tests have no
libtorch part; its ensemble part (simple_zero, sequence_zero, fan_zero) is not ported.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.qa.infer_checks import infer_zero
from tests.e2e.qa.targets import Endpoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# InferZeroTest.test_<id>: (dtype, one shape per input).
CASES = {
    "ff1_sanity": (np.float32, [[1]]),
    "ff1": (np.float32, [[0]]),
    "ff3_sanity": (np.float32, [[1], [2], [1]]),
    "ff3_0": (np.float32, [[0], [0], [0]]),
    "ff3_1": (np.float32, [[0], [0], [1]]),
    "ff3_2": (np.float32, [[0], [1], [0]]),
    "ff3_3": (np.float32, [[1], [0], [0]]),
    "ff3_4": (np.float32, [[1], [0], [1]]),
    "bb1_sanity": (bool, [[10]]),
    "bb1_0": (bool, [[0]]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_zero(server: Endpoint, rng: np.random.Generator, case: str) -> None:
    """InferZeroTest.test_<case>."""
    dtype, shapes = CASES[case]
    for batch in (1, 8):
        batch_shapes = [[batch, *shape] for shape in shapes]
        infer_zero(server, rng, "libtorch", dtype, batch_shapes, batch_shapes)
    infer_zero(server, rng, "libtorch_nobatch", dtype, shapes, shapes)
