"""The transport-free core: route to the runtime, validate requests, shape responses.

Every request is checked against the model's signature (names, datatypes, shapes,
batch size) before any model runs, so a bad request is a 400 of its own and never
reaches a batch. A raw binary request (the body is the model's one input) is shaped here,
once the model's signature is known.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import numpy as np

from serve_app.datatypes import numpy_dtype
from serve_app.errors import InvalidInputError, ModelControlDisabledError, ModelNotReadyError
from serve_app.infer_types import InferRequest, InferResponse, InputTensor, RequestedOutput
from serve_app.repository import ModelSignature, TensorSpec
from serve_app.runtimes.base import NO_OPTIONS, InferOptions, Runtime

# Protocol extensions the codecs, routes and dataplane serve whatever the runtime, and those that
# are the runtime's to honour (advertised only where the runtime's own metadata lists them).
# Triton core lists more (shared memory, classification, trace, logging): this app serves none.
SERVED_EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "parameters",
    "statistics",
)
RUNTIME_EXTENSIONS = ("schedule_policy", "sequence")

# Request parameters Triton schedules by (KServe v2 names), and the types each takes.
_SCHEDULING_PARAMETERS: dict[str, tuple[type, ...]] = {
    "priority": (int,),
    "timeout": (int,),
    "sequence_id": (int, str),
    "sequence_start": (bool,),
    "sequence_end": (bool,),
}
_TYPE_NAMES = {bool: "boolean", int: "integer", str: "string"}


Outputs = dict[str, np.ndarray]


class InferObserver(Protocol):
    """Sees every inference the dataplane routes, for metrics (serve_app.metrics.ReplicaMetrics)."""

    def rejected(self, model: str, version: str) -> None:
        """Refused before the runtime: inputs, outputs or parameters that do not fit the model."""

    async def observe(self, model: str, version: str, call: Awaitable[Outputs]) -> Outputs:
        """Await the runtime's answer to one validated request."""


class Deployment(Protocol):
    """The models of the whole deployment (serve_app.model_state.DeploymentModels): a load or an
    unload applies to every replica before it returns, statistics and the index cover them all."""

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...

    async def statistics(self, model: str | None, version: str | None) -> dict[str, Any]: ...

    async def index(self) -> list[dict[str, Any]]: ...

    def describe(self) -> dict[str, Any]:
        """This replica's `loaded_models` and `model_loads`, for GET /v2."""


class Residency(Protocol):
    """On-demand placement (serve_app.residency.ModelCache): which models this replica holds."""

    def use(self, model: str) -> AbstractAsyncContextManager[float]:
        """Hold `model` resident for one request, loading it first if it is not (yields the
        seconds the request waited for that)."""

    def holds(self, model: str) -> bool: ...

    def check(self, model: str) -> None:
        """Raise why `model` cannot be served now; otherwise it is ready, resident or not."""


class Catalog(Protocol):
    """What a model's config says without loading it (serve_app.residency.Catalog); None: load it."""

    def metadata(self, model: str, version: str | None) -> dict[str, Any] | None: ...

    def config(self, model: str) -> dict[str, Any] | None: ...


class Expected:
    """What a model version takes and returns, indexed once per signature for every request's checks."""

    def __init__(self, signature: ModelSignature) -> None:
        self.signature = signature
        self.inputs = {t.name: t for t in signature.inputs}
        self.output_names = [t.name for t in signature.outputs]
        self.output_set = frozenset(self.output_names)
        # Every output in model order (a request that names none), binary or not.
        self.every_output = {
            binary: tuple(RequestedOutput(name, binary) for name in self.output_names)
            for binary in (False, True)
        }


class DataPlane:
    def __init__(
        self,
        runtime: Runtime,
        deployment: Deployment,
        *,
        model_control: bool,
        placement: dict[str, Any],
        observer: InferObserver | None = None,
        residency: Residency | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self._runtime = runtime
        self._residency = residency
        self._catalog = catalog
        self._deployment = deployment
        self._model_control = model_control
        self._placement = placement
        self._observer = observer
        self._expected: dict[tuple[str, str], Expected] = {}  # by model and version

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._runtime.healthy()

    def server_metadata(self) -> dict[str, Any]:
        """The runtime's server metadata with the extensions served here, plus where this replica
        runs (runtime, device, GPU ids)."""
        metadata = self._runtime.server_metadata()
        honoured = [name for name in RUNTIME_EXTENSIONS if name in metadata.get("extensions", ())]
        placement = {
            "runtime": self._runtime.name,
            "device": self._runtime.device(),
            **self._placement,
            **self._deployment.describe(),
        }
        return {**metadata, "extensions": [*SERVED_EXTENSIONS, *honoured], "serve_app": placement}

    def _elsewhere(self, model: str) -> bool:
        """On demand: `model` is not resident here (what the config says answers for it)."""
        return self._residency is not None and not self._residency.holds(model)

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        if self._elsewhere(model) and self._catalog is not None:
            assert self._residency is not None
            self._residency.check(model)
            described = self._catalog.metadata(model, version)
            if described is not None:
                return described
        return self._runtime.metadata(model, version)

    def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        if self._elsewhere(model) and self._catalog is not None:
            assert self._residency is not None
            self._residency.check(model)
            config = self._catalog.config(model)
            if config is not None:
                return config
        return self._runtime.config(model, version)

    def model_ready(self, model: str, version: str | None) -> dict[str, Any]:
        """Raises 404 (unknown) or 503 (not ready); returns the KServe ready body. On demand, a
        model the deployment serves is ready whether or not it is resident here: its first
        request loads it."""
        if self._elsewhere(model):
            assert self._residency is not None
            self._residency.check(model)
        else:
            self._runtime.resolve(model, version)
        return {"name": model, "ready": True}

    async def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        """Triton's statistics summed over the deployment's replicas."""
        return await self._deployment.statistics(model, version)

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        rows = await self._deployment.index()
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows

    async def load(self, model: str, parameters: dict[str, Any]) -> None:
        self._check_model_control(model)
        if parameters:
            raise InvalidInputError(
                f"load parameters {sorted(parameters)} (config or file overrides) are not supported; "
                "edit the model in the repository and load it again"
            )
        await self._deployment.load(model)

    async def unload(self, model: str) -> None:
        self._check_model_control(model)
        await self._deployment.unload(model)

    def _check_model_control(self, model: str) -> None:
        if not self._model_control:
            raise ModelControlDisabledError(
                "model load/unload is disabled; set args.model_control: true in the app config"
            )
        if not model or model.startswith(".") or "/" in model or "\\" in model:
            raise InvalidInputError(f"'{model}' is not a model directory name")

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._residency is None:
            return await self._infer_latest(request)
        async with self._residency.use(request.model_name) as waited_s:
            response = await self._infer_latest(request)
        response.model_load_s = waited_s
        return response

    async def _infer_latest(self, request: InferRequest) -> InferResponse:
        version = self._runtime.resolve(request.model_name, request.model_version)
        try:
            return await self._infer(request, version)
        except ModelNotReadyError:
            # A version roll: the latest version, resolved a moment ago, was replaced before it ran.
            if request.model_version is not None:
                raise
            latest = self._runtime.resolve(request.model_name, None)
            if latest == version:
                raise
            return await self._infer(request, latest)

    async def _infer(self, request: InferRequest, version: str) -> InferResponse:
        model = request.model_name
        expected = self._expected_of(model, version)
        try:
            request = resolve_raw_input(request, expected.signature)
            inputs = validate_inputs(expected, request.inputs)
            outputs = requested_outputs(expected, request)
            options = infer_options(request.parameters)
        except InvalidInputError:
            if self._observer is not None:
                self._observer.rejected(model, version)
            raise
        call = self._runtime.infer(model, version, inputs, [o.name for o in outputs], options)
        results = await (call if self._observer is None else self._observer.observe(model, version, call))
        return InferResponse(
            model_name=request.model_name,
            model_version=version,
            outputs=[(o, results[o.name]) for o in outputs],
            id=request.id,
            parameters=dict(options.parameters) if options.parameters else None,
        )

    def _expected_of(self, model: str, version: str) -> Expected:
        """The runtime's signature, indexed; again whenever the runtime hands out another (a reload)."""
        signature = self._runtime.signature(model, version)
        expected = self._expected.get((model, version))
        if expected is None or expected.signature is not signature:
            expected = self._expected[model, version] = Expected(signature)
        return expected


def infer_options(parameters: dict[str, Any]) -> InferOptions:
    """Request parameters → scheduling options; a value of the wrong type is refused."""
    if not parameters:
        return NO_OPTIONS  # the runtimes skip applying the defaults
    scheduling: dict[str, Any] = {}
    others: list[tuple[str, str | int | float | bool]] = []
    for key, value in parameters.items():
        types = _SCHEDULING_PARAMETERS.get(key)
        if types is None:
            if not isinstance(value, (str, int, float, bool)):
                raise InvalidInputError(
                    f"request parameter '{key}' must be a string, number or boolean, "
                    f"not {type(value).__name__}"
                )
            others.append((key, value))
            continue
        # bool is an int in Python; Triton's JSON types keep them apart.
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            names = " or ".join(_TYPE_NAMES[t] for t in types)
            raise InvalidInputError(f"request parameter '{key}' must be {names}, not {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < 2**64:
            raise InvalidInputError(f"request parameter '{key}' must be between 0 and 2**64 - 1")
        scheduling[key] = value
    return InferOptions(
        priority=scheduling.get("priority", 0),
        timeout_us=scheduling.get("timeout", 0),
        sequence_id=scheduling.get("sequence_id", 0),
        sequence_start=scheduling.get("sequence_start", False),
        sequence_end=scheduling.get("sequence_end", False),
        parameters=tuple(others),
    )


def resolve_raw_input(request: InferRequest, signature: ModelSignature) -> InferRequest:
    """A raw binary request's body as the model's one input (Triton's rules); others pass through.

    The model must have exactly one input with at most one variable dimension, which the
    byte count decides; a batching model gets a batch of 1. (Triton also takes a BYTES input
    of shape [1]; BYTES is refused here as everywhere.)
    """
    raw = request.raw_input
    if raw is None:
        return request
    if len(signature.inputs) != 1:
        raise InvalidInputError(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with one input; "
            f"model '{signature.name}' has {len(signature.inputs)}"
        )
    [spec] = signature.inputs
    dtype = numpy_dtype(spec.datatype)
    dims = list(spec.dims)
    variable = [i for i, dim in enumerate(dims) if dim == -1]
    element_bytes = math.prod(dim for dim in dims if dim != -1) * dtype.itemsize
    if len(variable) > 1:
        raise InvalidInputError(
            f"a raw binary request needs an input with at most one variable dimension; "
            f"input '{spec.name}' of model '{signature.name}' has dims {dims}"
        )
    if variable and element_bytes and len(raw) % element_bytes == 0:
        dims[variable[0]] = len(raw) // element_bytes
    elif variable or len(raw) != element_bytes:
        raise InvalidInputError(
            f"a raw binary request of {len(raw)} bytes does not fill input '{spec.name}' of model "
            f"'{signature.name}' (dims {list(spec.dims)} of {spec.datatype})"
        )
    shape = (1, *dims) if signature.max_batch_size > 0 else tuple(dims)
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return dataclasses.replace(
        request, inputs=[InputTensor(spec.name, spec.datatype, shape, array)], raw_input=None
    )


def validate_inputs(expected: Expected, inputs: list[InputTensor]) -> dict[str, np.ndarray]:
    """Check names, datatypes, shapes and batch size against the model; 400 on mismatch."""
    signature = expected.signature
    arrays: dict[str, np.ndarray] = {}
    batch_sizes = set()
    for tensor in inputs:
        spec = expected.inputs.get(tensor.name)
        if spec is None:
            raise InvalidInputError(
                f"unexpected inference input '{tensor.name}' for model '{signature.name}'; "
                f"expected {sorted(expected.inputs)}"
            )
        if tensor.name in arrays:
            raise InvalidInputError(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != spec.datatype:
            raise InvalidInputError(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{signature.name}' expects '{spec.datatype}'"
            )
        batch_sizes.add(_check_shape(signature, spec, tensor.shape))
        arrays[tensor.name] = tensor.array
    if len(arrays) != len(expected.inputs):  # none unknown, none twice: some are missing
        missing = sorted(set(expected.inputs) - set(arrays))
        raise InvalidInputError(f"model '{signature.name}' expects inputs {missing} that are missing")
    if len(batch_sizes) > 1:
        raise InvalidInputError(f"inputs have different batch sizes {sorted(batch_sizes)}")
    return arrays


def _check_shape(signature: ModelSignature, spec: TensorSpec, shape: tuple[int, ...]) -> int:
    """Returns the batch size (1 for models without batching)."""
    dims = shape
    batch = 1
    if signature.max_batch_size > 0:
        if not shape:
            raise InvalidInputError(f"input '{spec.name}' needs a leading batch dimension")
        batch, dims = shape[0], shape[1:]
        if not 1 <= batch <= signature.max_batch_size:
            raise InvalidInputError(
                f"inference request batch-size {batch} for input '{spec.name}' must be between "
                f"1 and max_batch_size {signature.max_batch_size} of model '{signature.name}'"
            )
    if not _fits(spec.dims, dims):
        expected = [-1, *spec.dims] if signature.max_batch_size > 0 else list(spec.dims)
        raise InvalidInputError(
            f"unexpected shape for input '{spec.name}' of model '{signature.name}': "
            f"expected {expected}, got {list(shape)}"
        )
    return batch


def _fits(spec_dims: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    """`dims` fits `spec_dims`, where -1 takes any size (without one, tuples compare at C speed)."""
    if -1 not in spec_dims:
        return dims == spec_dims
    return len(dims) == len(spec_dims) and all(e in (-1, d) for e, d in zip(spec_dims, dims, strict=True))


def requested_outputs(expected: Expected, request: InferRequest) -> Sequence[RequestedOutput]:
    """The outputs to return (all of them in model order when none are named)."""
    if request.outputs is None:
        return expected.every_output[request.binary_output]
    if any(o.name not in expected.output_set for o in request.outputs):
        unknown = sorted({o.name for o in request.outputs} - expected.output_set)
        raise InvalidInputError(
            f"model '{expected.signature.name}' has no outputs {unknown}; "
            f"its outputs are {expected.output_names}"
        )
    return request.outputs
