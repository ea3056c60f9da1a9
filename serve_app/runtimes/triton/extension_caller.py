"""Requests into in-process Triton through serve_app's extension (request_extension.cc).

The extension's callbacks are C: Triton's threads never take the GIL, and each event loop
watches one eventfd that says "responses are waiting"; a single `drain()` then settles them
all. The bindings' path (bindings_caller.BindingsCaller) calls Python on Triton's threads for
every output, response and release instead; it serves where the extension is not built.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
from functools import cache
from types import ModuleType
from typing import Any

from serve_app import triton_layout
from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.repository import ModelSignature
from serve_app.runtimes.base import NO_OPTIONS, InferOptions
from serve_app.runtimes.triton.model_call import Input, ModelCall, Outputs

MODULE = "serve_app_triton_requests"


@cache
def extension() -> ModuleType | None:
    """The compiled extension, or None where `serve_app.triton_install` has not built it."""
    path = triton_layout.requests_extension_path()
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ExtensionCaller:
    """Sends requests to one in-process server; responses come back on the caller's event loop."""

    def __init__(self, server: Any, module: ModuleType) -> None:
        from tritonserver import _c

        self._module = module
        self._server = server._server._ptr()  # TRITONSERVER_Server*, owned by tritonserver.Server
        self._types = {name: int(getattr(_c.TRITONSERVER_DataType, name)) for name in NUMPY_BY_DATATYPE}
        self._start_flag = int(_c.TRITONSERVER_RequestFlag.SEQUENCE_START)
        self._end_flag = int(_c.TRITONSERVER_RequestFlag.SEQUENCE_END)
        self._tokens = itertools.count(1)
        self._loops: dict[asyncio.AbstractEventLoop, _LoopRequests] = {}  # a replica has one loop

    def model_call(self, name: str, version: int, signature: ModelSignature) -> ModelCall:
        return ModelCall.build(name, version, signature, self._types)

    async def infer(self, call: ModelCall, inputs: dict[str, Input], options: InferOptions) -> Outputs:
        """Run one request; raises tritonserver's errors (the caller maps them)."""
        loop = asyncio.get_running_loop()
        requests = self._loops.get(loop)
        if requests is None:
            requests = self._loops[loop] = _LoopRequests(self._module.Requests(self._server), loop)
        token = next(self._tokens)
        future = requests.submit(
            token, call, inputs, None if options is NO_OPTIONS else self._options(options)
        )
        try:
            return await future
        except asyncio.CancelledError:
            requests.cancel(token)
            raise

    def close(self) -> None:
        """Stop watching for responses (after the server stopped: none can come)."""
        for loop, requests in list(self._loops.items()):
            if not loop.is_closed():
                loop.call_soon_threadsafe(requests.close, loop)
        self._loops.clear()

    def _options(self, options: InferOptions) -> tuple[int, int, int | str, int, list[tuple[str, Any]]]:
        flags = (self._start_flag if options.sequence_start else 0) | (
            self._end_flag if options.sequence_end else 0
        )
        return options.priority, options.timeout_us, options.sequence_id or 0, flags, list(options.parameters)


class _LoopRequests:
    """One event loop's requests in flight: their futures until answered, inputs until released."""

    def __init__(self, requests: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._requests = requests
        self._futures: dict[int, asyncio.Future[Outputs]] = {}
        self._inputs: dict[int, dict[str, Input]] = {}  # Triton reads them until it releases
        self._loop = loop
        loop.add_reader(requests.fd, self._drain)

    def submit(
        self, token: int, call: ModelCall, inputs: dict[str, Input], options: tuple | None
    ) -> asyncio.Future[Outputs]:
        self._requests.submit(token, call.name, call.version, inputs, call.input_types, options)
        future = self._futures[token] = self._loop.create_future()
        self._inputs[token] = inputs
        return future

    def cancel(self, token: int) -> None:
        self._futures.pop(token, None)
        self._requests.cancel(token)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._requests.fd)
        self._drain()

    def _drain(self) -> None:
        for token, outcome in self._requests.drain():
            if outcome is None:  # released
                del self._inputs[token]
                continue
            future = self._futures.pop(token, None)
            if future is None or future.done():  # cancelled, or a decoupled model's later response
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
