"""The transport-free core: route to the runtime, check requests, shape responses.

Every request is checked against the model's signature before any model runs
(`request_checks`); model control, statistics and the index go to the whole deployment
(`Deployment`); on-demand placement makes the model resident first (`Residency`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import numpy as np

from serve_app import __version__
from serve_app import request_checks as checks
from serve_app.errors import (
    MODEL_CONTROL_OFF,
    InvalidInputError,
    ModelControlDisabledError,
    ModelNotReadyError,
)
from serve_app.infer_types import InferRequest, InferResponse
from serve_app.runtimes.base import LoadParameters, Runtime

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

    async def load(self, model: str, parameters: LoadParameters) -> None: ...

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
        self._expected: dict[tuple[str, str], checks.Expected] = {}  # by model and version

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._runtime.healthy()

    def server_metadata(self) -> dict[str, Any]:
        """The runtime's server metadata (`name: triton` on both runtimes, as clients read it) with
        the extensions served here, plus serve_app's own facts: its version and where this
        replica runs (runtime, device, GPU ids)."""
        metadata = self._runtime.server_metadata()
        honoured = [name for name in RUNTIME_EXTENSIONS if name in metadata.get("extensions", ())]
        own = {
            "version": __version__,
            "runtime": self._runtime.name,
            "device": self._runtime.device(),
            **self._placement,
            **self._deployment.describe(),
        }
        return {**metadata, "extensions": [*SERVED_EXTENSIONS, *honoured], "serve_app": own}

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
        """Load on every replica; a `config` override is checked here, before anything changes."""
        self._check_model_control(model)
        await self._deployment.load(model, checks.load_parameters(model, parameters))

    async def unload(self, model: str) -> None:
        self._check_model_control(model)
        await self._deployment.unload(model)

    def _check_model_control(self, model: str) -> None:
        if not self._model_control:
            raise ModelControlDisabledError(MODEL_CONTROL_OFF)
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
            request = checks.resolve_raw_input(request, expected.signature)
            inputs = checks.validate_inputs(expected, request.inputs)
            outputs = checks.requested_outputs(expected, request)
            options = checks.infer_options(request.parameters)
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

    def _expected_of(self, model: str, version: str) -> checks.Expected:
        """The runtime's signature, indexed; again whenever the runtime hands out another (a reload)."""
        signature = self._runtime.signature(model, version)
        expected = self._expected.get((model, version))
        if expected is None or expected.signature is not signature:
            expected = self._expected[model, version] = checks.Expected(signature)
        return expected
