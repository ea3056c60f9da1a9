"""qa/L0_infer/infer_test.py (r24.10), InferTest: its raw-output and version tests on the libtorch
models (`BACKENDS=libtorch`, no ensembles, no shared memory).

`_full_exact` keeps QA's libtorch branch: a non-batching request to `libtorch_nobatch_*` and
requests of batch 1 and 8 to `libtorch_*`; string models only non-batching. The version tests run
in QA on graphdef/savedmodel; gen_qa_models.py builds the same versions and policies for libtorch
(int8 latest 1, int16 latest 2, int32 all, float32 specific [1, 3]), which they run on here.
"""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.e2e.qa.infer_checks import infer_exact
from tests.e2e.qa.models import STRING, is_string
from tests.e2e.qa.targets import Endpoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

I8, I16, I32, I64, F32 = np.int8, np.int16, np.int32, np.int64, np.float32

# InferTest.test_raw_<id>: (input, output0, output1 dtypes, swap), the ones libtorch takes: QA's
# validate_for_libtorch_model drops uint8 and float16 (uuu, hhh, hff, fuu, uff, fuh, ihs) and
# _full_exact skips bii for libtorch (PyTorch issue 66930).
RAW_CASES = {
    "bbb": ((I8, I8, I8), True),
    "sss": ((I16, I16, I16), True),
    "iii": ((I32, I32, I32), True),
    "lll": ((I64, I64, I64), False),
    "fff": ((F32, F32, F32), True),
    "ibb": ((I32, I8, I8), False),
    "ibs": ((I32, I8, I16), False),
    "iff": ((I32, F32, F32), False),
    "fii": ((F32, I32, I32), False),
    "ooo": ((STRING, STRING, STRING), False),
    "oii": ((STRING, I32, I32), False),
    "oio": ((STRING, I32, STRING), False),
    "ooi": ((STRING, STRING, I32), False),
    "ioo": ((I32, STRING, STRING), False),
    "iio": ((I32, I32, STRING), False),
    "ioi": ((I32, STRING, I32), False),
}
INPUT_SIZE = 16


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_raw(server: Endpoint, rng: np.random.Generator, case: str) -> None:
    """InferTest.test_raw_<case> (`_full_exact` with output0_raw=output1_raw=True)."""
    dtypes, swap = RAW_CASES[case]
    if any(is_string(d) for d in dtypes):
        # "Skip batching for PyTorch String I/O": one non-batching request, request ids checked.
        infer_exact(server, rng, "libtorch_nobatch", (INPUT_SIZE,), 1, *dtypes, swap=swap)
        return
    for batch in (1, 8):
        if batch == 1:
            infer_exact(
                server,
                rng,
                "libtorch_nobatch",
                (INPUT_SIZE,),
                1,
                *dtypes,
                swap=swap,
                skip_request_id_check=True,
            )
        infer_exact(
            server,
            rng,
            "libtorch",
            (batch, INPUT_SIZE),
            batch,
            *dtypes,
            swap=swap,
            skip_request_id_check=True,
        )


def _unknown_version(server: Endpoint, rng: np.random.Generator, dtype: object, version: int) -> None:
    """A version the policy does not serve: the error starts with Triton's unknown-model text."""
    with pytest.raises(InferenceServerException) as raised:
        infer_exact(server, rng, "libtorch", (1, INPUT_SIZE), 1, dtype, dtype, dtype, model_version=version)
    assert raised.value.message().startswith("Request for unknown model"), raised.value.message()


def _version(server: Endpoint, rng: np.random.Generator, dtype: object, version: int, swap: bool) -> None:
    infer_exact(
        server, rng, "libtorch", (1, INPUT_SIZE), 1, dtype, dtype, dtype, model_version=version, swap=swap
    )


def test_raw_version_latest_1(server: Endpoint, rng: np.random.Generator) -> None:
    """InferTest.test_raw_version_latest_1: three versions, `latest 1` serves only version 3."""
    _unknown_version(server, rng, I8, 1)
    _unknown_version(server, rng, I8, 2)
    _version(server, rng, I8, 3, swap=True)


def test_raw_version_latest_2(server: Endpoint, rng: np.random.Generator) -> None:
    """InferTest.test_raw_version_latest_2: `latest 2` serves versions 2 and 3."""
    _unknown_version(server, rng, I16, 1)
    _version(server, rng, I16, 2, swap=True)
    _version(server, rng, I16, 3, swap=True)


def test_raw_version_all(server: Endpoint, rng: np.random.Generator) -> None:
    """InferTest.test_raw_version_all: `all` serves versions 1 (add/sub) and 2, 3 (swapped)."""
    _version(server, rng, I32, 1, swap=False)
    _version(server, rng, I32, 2, swap=True)
    _version(server, rng, I32, 3, swap=True)


def test_raw_version_specific_1_3(server: Endpoint, rng: np.random.Generator) -> None:
    """InferTest.test_raw_version_specific_1_3: `specific [1, 3]` serves 1 and 3, not 2."""
    _version(server, rng, F32, 1, swap=False)
    _unknown_version(server, rng, F32, 2)
    _version(server, rng, F32, 3, swap=True)
