"""One target per parameter (standalone Triton, serve_app on each runtime), started once for the
whole `tests/e2e/qa` package: pytest groups the package's tests by target, so each server starts
once and is stopped before the next one starts (and before the e2e modules after this package
start their own `serve run` on the session's Ray cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.qa import models
from tests.e2e.qa.targets import STANDALONE, TARGETS, Endpoint, Target, serve_app_target, standalone_target

# The ported checks live in helper modules (imported by the test modules, after this): rewrite their
# asserts too, so that a failure shows both sides.
pytest.register_assert_rewrite("tests.e2e.qa.examples", "tests.e2e.qa.infer_checks")


@pytest.fixture(scope="package")
def qa_repositories(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the QA repository, the model-control repository); read-only."""
    root = tmp_path_factory.mktemp("qa-repositories")
    return models.build_qa_repository(root / "qa"), models.build_control_repository(root / "control")


@pytest.fixture(scope="package", params=TARGETS)
def target(
    request: pytest.FixtureRequest,
    qa_repositories: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Target]:
    repository, control_repository = qa_repositories
    workdir = tmp_path_factory.mktemp(f"qa-{request.param}")
    if request.param == STANDALONE:
        started = standalone_target(repository, control_repository, workdir)
    else:
        ray_address = request.getfixturevalue("ray_address")
        started = serve_app_target(request.param, repository, control_repository, workdir, ray_address)
    with started as running:
        yield running


@pytest.fixture
def server(target: Target) -> Endpoint:
    """The target's main endpoint: the QA repository, model control off."""
    return target.main
