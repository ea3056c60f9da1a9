"""Typed errors and the one table that turns them into HTTP statuses.

Everything below the HTTP edge raises these; `http.py` renders them as
`{"error": message}` with `status_for(exc)`. Errors raised by the in-process
Triton server are mapped by their class name so this module never imports
`tritonserver`.
"""

from __future__ import annotations

import re


class ServeAppError(Exception):
    """Base class: a failure that a client can be told about."""


class InvalidInputError(ServeAppError):
    """The request is malformed or does not match the model's signature."""


class ModelNotFoundError(ServeAppError):
    """No such model, or no such version of it."""


class ModelNotReadyError(ServeAppError):
    """The model exists but cannot serve now (failed to load, unloaded)."""


class PayloadTooLargeError(ServeAppError):
    """The request body is larger than the configured limit."""


class ModelControlDisabledError(ServeAppError):
    """Load/unload was requested but the app was started without model control."""


class InternalError(ServeAppError):
    """A genuine server fault; the message carries no stack trace."""


_STATUS_BY_ERROR: dict[type[ServeAppError], int] = {
    InvalidInputError: 400,
    ModelControlDisabledError: 403,
    ModelNotFoundError: 404,
    PayloadTooLargeError: 413,
    InternalError: 500,
    ModelNotReadyError: 503,
}

# tritonserver's typed errors (tritonserver._api._error) by class name.
_ERROR_BY_TRITON_NAME: dict[str, type[ServeAppError]] = {
    "InvalidArgumentError": InvalidInputError,
    "UnsupportedError": InvalidInputError,
    "AlreadyExistsError": InvalidInputError,
    "NotFoundError": ModelNotFoundError,
    "UnavailableError": ModelNotReadyError,
    "InternalError": InternalError,
    "UnknownError": InternalError,
}


_TRITON_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\] ")


def from_triton(exc: Exception) -> ServeAppError:
    """Translate an error raised by `tritonserver` into ours (by class name).

    The message is `args[0]`: an error response appends the response object to the args, and
    Triton prefixes request errors with `[request id: ...]`, which names no request of ours.
    """
    error_type = _ERROR_BY_TRITON_NAME.get(type(exc).__name__, InternalError)
    message = str(exc.args[0]) if exc.args else type(exc).__name__
    return error_type(_TRITON_REQUEST_ID.sub("", message, count=1))


def status_for(exc: ServeAppError) -> int:
    """The HTTP status for an error, walking up its class hierarchy."""
    for cls in type(exc).__mro__:
        if cls in _STATUS_BY_ERROR:
            return _STATUS_BY_ERROR[cls]
    return 500


def summarize(exc: BaseException) -> str:
    """The last meaningful line of an error: TorchScript errors embed a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
