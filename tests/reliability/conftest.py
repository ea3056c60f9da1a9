"""The reliability tier's `serve run` tests share the e2e tier's Ray cluster.

`ray_address` is tests/e2e/conftest.py's session cluster: reused when the e2e tests of
this session already started it (one process holds one Ray connection), else started
here by the same function and shut down when this package's tests are done, so the e2e
fixture can start its own afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray

from tests.e2e import conftest as e2e


@pytest.fixture(scope="package")
def ray_address() -> Iterator[str]:
    if ray.is_initialized():
        yield ray.get_runtime_context().gcs_address
        return
    yield from e2e.ray_address.__wrapped__()  # the undecorated generator of the e2e fixture
