"""The one error table: every error type has an HTTP status and a gRPC code, in one row."""

from __future__ import annotations

import inspect

import grpc
import pytest

from serve_app import errors
from serve_app.errors import ServeAppError, grpc_code_for, status_for

ERROR_TYPES = [
    cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, ServeAppError)
]


def test_every_error_type_has_a_row() -> None:
    assert set(errors._STATUS_BY_ERROR) == set(ERROR_TYPES) - {ServeAppError}


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda cls: cls.__name__)
def test_every_error_type_has_both_columns(cls: type[ServeAppError]) -> None:
    exc = cls("message")
    assert 400 <= status_for(exc) < 600
    code = grpc.StatusCode[grpc_code_for(exc)]
    assert code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)


def test_the_grpc_codes() -> None:
    assert {cls.__name__: grpc_code_for(cls("m")) for cls in ERROR_TYPES} == {
        "InvalidInputError": "INVALID_ARGUMENT",
        "ModelControlDisabledError": "UNAVAILABLE",
        "ModelNotFoundError": "NOT_FOUND",
        "PayloadTooLargeError": "RESOURCE_EXHAUSTED",
        "InsufficientStorageError": "RESOURCE_EXHAUSTED",
        "InternalError": "INTERNAL",
        "ModelNotReadyError": "UNAVAILABLE",
        "ServeAppError": "INTERNAL",
    }


def test_subclasses_take_their_parents_row() -> None:
    class Subclass(errors.ModelNotReadyError):
        pass

    assert (status_for(Subclass("m")), grpc_code_for(Subclass("m"))) == (503, "UNAVAILABLE")
