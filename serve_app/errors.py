"""Typed errors, the one table that gives each its HTTP status and gRPC code, and Triton's texts.

Everything below the transports raises these; `http_api.py` renders them as
`{"error": message}` with `status_for(exc)`, `grpc_api.py` as a gRPC status with
`grpc_code_for(exc)`. One row per error type holds both, so the transports cannot drift
apart. gRPC codes are `grpc.StatusCode` names and Triton's errors are mapped by class
name, so this module imports neither `grpc` nor `tritonserver`.

Where Triton (r24.10's server and core) answers the same condition, the message begins with
Triton's text and the code is Triton's, so that clients and scripts written against Triton
match it; serve_app's own detail may follow. The texts both runtimes share are built here.
"""

from __future__ import annotations

import re
from typing import NamedTuple


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


class InsufficientStorageError(ServeAppError):
    """A model larger than a replica's whole memory budget (on-demand placement): 507, as Triton's
    SageMaker front answers a load that runs out of memory."""


class ModelControlDisabledError(ServeAppError):
    """Load/unload was requested but the app was started without model control (Triton:
    UNAVAILABLE, as when its model control mode is not explicit)."""


class InternalError(ServeAppError):
    """A genuine server fault; the message carries no stack trace."""


class Status(NamedTuple):
    """How each transport reports an error type."""

    http: int
    grpc: str  # a grpc.StatusCode name


_STATUS_BY_ERROR: dict[type[ServeAppError], Status] = {
    InvalidInputError: Status(400, "INVALID_ARGUMENT"),
    ModelNotFoundError: Status(404, "NOT_FOUND"),
    PayloadTooLargeError: Status(413, "RESOURCE_EXHAUSTED"),
    InsufficientStorageError: Status(507, "RESOURCE_EXHAUSTED"),
    InternalError: Status(500, "INTERNAL"),
    ModelNotReadyError: Status(503, "UNAVAILABLE"),
    ModelControlDisabledError: Status(503, "UNAVAILABLE"),
}
_UNMAPPED = Status(500, "INTERNAL")

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


def _status(exc: ServeAppError) -> Status:
    """The table's row for an error, walking up its class hierarchy."""
    for cls in type(exc).__mro__:
        if cls in _STATUS_BY_ERROR:
            return _STATUS_BY_ERROR[cls]
    return _UNMAPPED


def status_for(exc: ServeAppError) -> int:
    """The HTTP status for an error."""
    return _status(exc).http


def grpc_code_for(exc: ServeAppError) -> str:
    """The gRPC status code (a `grpc.StatusCode` name) for an error."""
    return _status(exc).grpc


def summarize(exc: BaseException) -> str:
    """The last meaningful line of an error: TorchScript errors embed a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# --- Triton's texts that both runtimes and the dataplane raise --------------------------------


def unknown_model(model: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"Request for unknown model: '{model}' is not found")


def unknown_version(model: str, version: int) -> ModelNotFoundError:
    return ModelNotFoundError(f"Request for unknown model: '{model}' version {version} is not found")


def version_not_ready(model: str, version: int, reason: str) -> ModelNotReadyError:
    """A version the policy serves that is not loaded (Triton: "is not at ready state")."""
    return ModelNotReadyError(
        f"Request for unknown model: '{model}' version {version} is not at ready state: {reason}"
    )


def no_ready_version(model: str, reason: str) -> ModelNotReadyError:
    """A model with no version ready. Triton answers NOT_FOUND; serve_app UNAVAILABLE, the
    code of a model that is there but cannot serve now (load failed, unloaded), with why."""
    return ModelNotReadyError(
        f"Request for unknown model: '{model}' has no available versions; "
        f"model '{model}' is not ready: {reason}"
    )


def load_not_polled(model: str, detail: str) -> InvalidInputError:
    """A load of a model the repository does not have, or with a config override that is not a
    model configuration: nothing changes. Triton's text; its code is INTERNAL, serve_app's 400
    (500 is for faults of the server, and this is the request's)."""
    return InvalidInputError(f"failed to load '{model}', failed to poll from model repository: {detail}")


MODEL_CONTROL_OFF = (
    "explicit model load / unload is not allowed if polling is enabled: model control is off "
    "(set args.model_control: true in the app config)"
)
