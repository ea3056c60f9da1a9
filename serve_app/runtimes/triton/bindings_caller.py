"""One inference through tritonserver's bindings: what `Model.async_infer` does, leaner.

The Python API builds a request object, a `Tensor` per input and output, a response allocator
and an asyncio queue per request, and looks up pybind enums in dicts on the way (more work per
request than a small model's own). Here a model's datatypes are resolved once, one
allocator serves every request (numpy buffers for outputs), and each request costs one Triton
request and its input appends. Responses come back through one queue per event loop: the
first response into an empty queue wakes the loop, which then settles every response queued
by then. The bindings still call Python, under the GIL, on Triton's threads for every output,
response and release: serve_app's extension (extension_caller.py) does not, and replaces this
caller wherever the installer built it.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections import deque
from typing import Any

import numpy as np

from serve_app.bytes_tensors import OBJECT, deserialize_output
from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.errors import InternalError
from serve_app.repository import ModelSignature
from serve_app.runtimes.base import NO_OPTIONS, InferOptions
from serve_app.runtimes.triton.model_call import Input, ModelCall, Outputs


class BindingsCaller:
    """Sends requests to one in-process server; responses come back on the caller's event loop."""

    def __init__(self, server: Any) -> None:
        from tritonserver import _c

        self._c = _c
        self._server = server._server  # the bindings' TRITONSERVER_Server of tritonserver.Server
        self._cpu = _c.TRITONSERVER_MemoryType.CPU
        self._start_flag = int(_c.TRITONSERVER_RequestFlag.SEQUENCE_START)
        self._end_flag = int(_c.TRITONSERVER_RequestFlag.SEQUENCE_END)
        # No start or query function: Triton calls a start function for every response it creates,
        # on its thread, before the model runs (a GIL round trip inside the batch's input phase),
        # and a query function only when a backend asks where to put an output.
        self._allocator = _c.TRITONSERVER_ResponseAllocator(self._allocate, self._release)
        self._types = {name: getattr(_c.TRITONSERVER_DataType, name) for name in NUMPY_BY_DATATYPE}
        self._completions: dict[asyncio.AbstractEventLoop, _Completions] = {}  # a replica has one loop

    def model_call(self, name: str, version: int, signature: ModelSignature) -> ModelCall:
        return ModelCall.build(name, version, signature, self._types)

    async def infer(self, call: ModelCall, inputs: dict[str, Input], options: InferOptions) -> Outputs:
        """Run one request; raises tritonserver's errors (the caller maps them)."""
        c = self._c
        request = c.TRITONSERVER_InferenceRequest(self._server, call.name, call.version)
        for name, given in inputs.items():
            array, shape = given if isinstance(given, tuple) else (given, given.shape)  # BYTES: serialized
            request.add_input(name, call.input_types[name], shape)
            request.append_input_data(name, array.ctypes.data, array.nbytes, self._cpu, 0)
        if options is not NO_OPTIONS:
            self._apply(request, options)
        loop = asyncio.get_running_loop()
        completions = self._completions.get(loop)
        if completions is None:
            completions = self._completions[loop] = _Completions(loop)
        future: asyncio.Future[Outputs] = loop.create_future()
        # The inputs ride on the release callback: Triton reads them until it releases the request.
        request.set_release_callback(_released, inputs)
        request.set_response_callback(
            self._allocator, None, _completed, (completions, future, call.output_dtypes)
        )
        self._server.infer_async(request)
        try:
            return await future
        except asyncio.CancelledError:
            request.cancel()
            raise

    def close(self) -> None:
        """Nothing to release: responses come back through `call_soon_threadsafe`."""

    def _apply(self, request: Any, options: InferOptions) -> None:
        request.priority_uint64 = options.priority
        request.timeout_microseconds = options.timeout_us
        if isinstance(options.sequence_id, str):
            request.correlation_id_string = options.sequence_id
        elif options.sequence_id:
            request.correlation_id = options.sequence_id
        request.flags = (self._start_flag if options.sequence_start else 0) | (
            self._end_flag if options.sequence_end else 0
        )
        for key, value in options.parameters:
            if isinstance(value, bool):
                request.set_bool_parameter(key, value)
            elif isinstance(value, int):
                request.set_int_parameter(key, value)
            elif isinstance(value, float):
                request.set_double_parameter(key, value)
            else:
                request.set_string_parameter(key, value)

    # Allocator callbacks, on Triton's threads: every output lands in a numpy buffer on the host.
    def _allocate(
        self, _allocator: Any, _name: str, byte_size: int, _type: Any, _type_id: int, _user: Any
    ) -> tuple[int, np.ndarray, Any, int]:
        buffer = np.empty(max(byte_size, 1), np.uint8)
        # The buffer's address, as `buffer.ctypes.data` gives it at a quarter of the cost (this
        # runs on Triton's thread, holding the GIL the event loop waits for).
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer)), buffer, self._cpu, 0

    def _release(self, *_: Any) -> None:
        """The buffer is the response's numpy array now; the garbage collector frees it."""


class _Completions:
    """Settled outcomes on their way from Triton's threads to one event loop.

    Runs with the GIL on both sides, so the deque and the flag need no lock. The flag is
    cleared before the queue is emptied: a response queued meanwhile schedules another drain.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: deque[tuple[asyncio.Future[Outputs], Outputs | BaseException]] = deque()
        self._wake_pending = False

    def put(self, future: asyncio.Future[Outputs], outcome: Outputs | BaseException) -> None:
        """On Triton's thread."""
        self._queue.append((future, outcome))
        if not self._wake_pending and not self._loop.is_closed():
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._wake_pending = False
        queue = self._queue
        while queue:
            future, outcome = queue.popleft()
            if future.done():  # cancelled meanwhile
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def _released(_request: Any, _flags: int, _inputs: Any) -> None:
    """Triton is done with the request's inputs; dropping this reference frees them."""


def _completed(response: Any, _flags: int, context: tuple[_Completions, asyncio.Future, Any]) -> None:
    """Triton's response callback (its thread): read the outputs here, settle the future there."""
    completions, future, dtypes = context
    if response is None:  # a final flag after the response (decoupled models): nothing to read
        return
    outcome: Outputs | BaseException
    try:
        response.throw_if_response_error()
        outcome = {}
        for index in range(response.output_count):
            name, _, shape, _, byte_size, _, _, buffer = response.output(index)
            dtype = dtypes.get(name)
            if dtype is None:
                raise InternalError(f"output '{name}' has a datatype this server cannot return")
            if dtype is OBJECT:
                outcome[name] = deserialize_output(buffer[:byte_size], shape, name)
            else:
                outcome[name] = buffer[:byte_size].view(dtype).reshape(shape)
    except Exception as exc:  # noqa: BLE001 - delivered to the awaiting request
        exc.__traceback__ = None  # the traceback would keep the C++ response (and its model) alive
        outcome = exc
    completions.put(future, outcome)
