"""qa/L0_infer_variable/infer_variable_test.py (r24.10), InferVariableTest: raw outputs of the
variable-shape add/sub models on libtorch (QA's qa_variable_model_repository, prefixed
`libtorch_variable` here to share one repository with the fixed-shape models of the same name).

As in QA's libtorch branch: the non-batching model with batch 1, the batching model with batch 8;
string models only non-batching and 1-D, so oii, ooi and oio (2-D and 3-D strings) have no
libtorch part. The class_* and mix_* tests ask for classification, which is not ported.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.qa.infer_checks import infer_exact
from tests.e2e.qa.models import STRING, VARIABLE_PREFIX, is_string
from tests.e2e.qa.targets import Endpoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

F32, I32, I64 = np.float32, np.int32, np.int64

# InferVariableTest.test_<id>: (dtypes, the shape sent); faw_iif is QA's own spelling.
CASES = {
    "raw_fff": ((F32, F32, F32), (16,)),
    "raw_fii": ((F32, I32, I32), (2, 8)),
    "raw_fll": ((F32, I64, I64), (8, 4)),
    "raw_fil": ((F32, I32, I64), (2, 8, 2)),
    "raw_ffi": ((F32, F32, I32), (16,)),
    "raw_iii": ((I32, I32, I32), (2, 8)),
    "faw_iif": ((I32, I32, F32), (2, 8, 2)),
    "raw_ooo": ((STRING, STRING, STRING), (16,)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_variable(server: Endpoint, rng: np.random.Generator, case: str) -> None:
    """InferVariableTest.test_<case> (`_full_exact`, libtorch branch)."""
    dtypes, shape = CASES[case]
    infer_exact(server, rng, f"{VARIABLE_PREFIX}_nobatch", shape, 1, *dtypes)
    if not any(is_string(d) for d in dtypes):
        infer_exact(server, rng, VARIABLE_PREFIX, (8, *shape), 8, *dtypes)
