"""serve_app's loggers, named by module, write through Serve's replica logger."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from serve_app.app import SERVE_LOGGER, ToServeLogger, log_through_serve


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def serve_records() -> Iterator[list[logging.LogRecord]]:
    """Serve's logger as a replica has it (INFO, its own handlers, no propagation), restored after."""
    serve, package = logging.getLogger(SERVE_LOGGER), logging.getLogger("serve_app")
    saved = (serve.level, serve.propagate, package.level, list(package.handlers))
    records = Records()
    serve.addHandler(records)
    serve.setLevel(logging.INFO)
    serve.propagate = False
    try:
        yield records.records
    finally:
        serve.removeHandler(records)
        serve.setLevel(saved[0])
        serve.propagate = saved[1]
        package.setLevel(saved[2])
        package.handlers[:] = saved[3]


def test_package_records_reach_serves_handlers_once(
    serve_records: list[logging.LogRecord],
) -> None:
    log_through_serve()
    log_through_serve()  # a second replica in the process adds no second handler
    logging.getLogger("serve_app.app").info("replica %s ready", "r1")
    logging.getLogger("serve_app.runtimes.factory").debug("below Serve's level")
    assert [(r.name, r.getMessage()) for r in serve_records] == [("serve_app.app", "replica r1 ready")]
    assert sum(isinstance(h, ToServeLogger) for h in logging.getLogger("serve_app").handlers) == 1
