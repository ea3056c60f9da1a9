"""The embedded runtime: executes the Triton repository with plain PyTorch.

Same semantics as Triton with its PyTorch backend (config.pbtxt, version policy,
implicit batch dim, reshape, dynamic batching, instance counts), so the app runs and is
tested where no Triton build or GPU exists; what it cannot execute as Triton would is
UNAVAILABLE (see admission.py). Each model version executes off the replica's event
loop on its own threads, one per model instance (`instance_group` counts), so a slow
model never stalls another; loads run on a thread of their own. torch's intra-op threads
use the replica's CPU allotment. The runtime reports itself unhealthy (Serve then
replaces the replica) when a scheduler has failed or an execution runs past
`execution_timeout_s`: a wedged model never answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.bytes_tensors import OBJECT
from serve_app.config import AppArgs
from serve_app.datatypes import NUMPY_BY_DATATYPE
from serve_app.errors import (
    InvalidInputError,
    ModelNotReadyError,
    load_not_polled,
    summarize,
    unknown_model,
)
from serve_app.placement import Placement
from serve_app.repository import ModelEntryError, ModelSignature
from serve_app.runtimes.base import (
    NO_OPTIONS,
    NO_PARAMETERS,
    InferOptions,
    LoadParameters,
    ModelState,
    Wanted,
    everything,
    model_version,
    pick_version,
)
from serve_app.runtimes.torch.admission import ModelSpec, RepositoryEntry, discover, load_model_spec
from serve_app.runtimes.torch.batching import Scheduler, Tensors
from serve_app.runtimes.torch.instances import InstanceThreads
from serve_app.runtimes.torch.statistics import ModelStatistics
from serve_app.runtimes.torch.torchscript import Timings, TorchScriptModel
from serve_app.storage import RepositoryMirror, RepositoryURL, StorageError
from serve_app.triton_layout import TRITON_VERSION

logger = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "model_configuration"]
LOAD_THREADS = 4
DEFAULT_EXECUTION_TIMEOUT_S: float = AppArgs.model_fields["execution_timeout_s"].default

Call = Callable[[Tensors], tuple[Tensors, Timings]]
# Brings `<repository>/<model>` up to date before a load reads it (a mirror of object storage).
Fetch = Callable[[str], Awaitable[None]]


@dataclass
class _Version:
    scheduler: Scheduler
    statistics: ModelStatistics
    threads: InstanceThreads
    string_inputs: frozenset[str] = frozenset()  # BYTES inputs, which TorchScript takes as List[str]


# Tensor name → (shape it arrives with, shape it leaves with), both without the batch dim.
Reshapes = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]


def _with_reshape(tensors: Iterable[Any]) -> list[Any]:
    """The config's ModelInput/ModelOutput messages that have a `reshape`."""
    return [t for t in tensors if t.HasField("reshape")]


class _Reshaped:
    """A model call with config.pbtxt's `reshape`s applied as Triton applies them: inputs from
    `dims` to `reshape.shape` before the model, outputs from `reshape.shape` back to `dims` after;
    the batch dim is kept and variable dims carry over in order."""

    def __init__(self, call: Call, spec: ModelSpec) -> None:
        self._call = call
        self._batched = spec.max_batch_size > 0
        inputs, outputs = _with_reshape(spec.config.input), _with_reshape(spec.config.output)
        self._inputs = {t.name: (tuple(t.dims), tuple(t.reshape.shape)) for t in inputs}
        self._outputs = {t.name: (tuple(t.reshape.shape), tuple(t.dims)) for t in outputs}

    @classmethod
    def wrap(cls, call: Call, spec: ModelSpec) -> Call:
        """`call` itself when nothing is reshaped, so those models pay nothing."""
        reshaped = cls(call, spec)
        return reshaped if reshaped._inputs or reshaped._outputs else call

    def __call__(self, inputs: Tensors) -> tuple[Tensors, Timings]:
        outputs, timings = self._call(self._convert("input", inputs, self._inputs))
        return self._convert("output", outputs, self._outputs), timings

    def _convert(self, kind: str, arrays: Tensors, reshapes: Reshapes) -> Tensors:
        converted = dict(arrays)  # never the request's own dict: a failed batch reruns it
        for name, (source, target) in reshapes.items():
            array = converted[name]
            lead = array.shape[:1] if self._batched else ()
            shape = array.shape[len(lead) :]
            if len(shape) != len(source) or any(d not in (-1, n) for d, n in zip(source, shape, strict=True)):
                expected = [-1, *source] if self._batched else list(source)
                raise ValueError(f"{kind} '{name}' has shape {list(array.shape)}, config.pbtxt: {expected}")
            variable = iter([n for d, n in zip(source, shape, strict=True) if d == -1])
            converted[name] = array.reshape((*lead, *(next(variable) if d == -1 else d for d in target)))
        return converted


@dataclass
class _Model:
    """A repository entry and, when it loaded, its serving versions."""

    name: str
    spec: ModelSpec | None = None
    error: str = ""
    versions: dict[int, _Version] = field(default_factory=dict)


class TorchRuntime:
    name = "torch"

    def __init__(
        self,
        repository: Path,
        device: torch.device,
        threads: int,
        execution_timeout_s: float = DEFAULT_EXECUTION_TIMEOUT_S,
        fetch: Fetch | None = None,
    ) -> None:
        self._repository = repository
        self._fetch = fetch
        self._device = device
        torch.set_num_threads(threads)
        self._execution_timeout_ns = int(execution_timeout_s * 1e9)
        # Loads of different models side by side (on-demand placement: a miss never queues behind another).
        self._loader = ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="torch-load")
        self._models: dict[str, _Model] = {}
        self._draining: list[tuple[str, _Version]] = []  # replaced or unloaded, still answering
        self._stopped = False

    @classmethod
    async def create(cls, args: AppArgs, placement: Placement, wanted: Wanted = everything) -> TorchRuntime:
        """The runtime the app's args describe, started. A repository on object storage is
        mirrored to local disk first, and each load fetches its model again."""
        repository, fetch = args.model_repository, None
        if isinstance(repository, RepositoryURL):
            mirror = RepositoryMirror(repository)
            await mirror.fetch()
            repository, fetch = mirror.root, mirror.fetch
        runtime = cls(
            repository,
            placement.torch_device(args.device),
            args.torch_threads or placement.threads(),
            args.execution_timeout_s,
            fetch=fetch,
        )
        await runtime.start(wanted)
        return runtime

    async def start(self, wanted: Wanted = everything) -> None:
        for entry in discover(self._repository):
            parameters = wanted(entry.name)
            if parameters is None:
                self._models[entry.name] = _Model(entry.name, entry.spec, entry.error or "unloaded")
                continue
            if parameters:  # the deployment loaded it with a config override
                entry = _entry(self._repository / entry.name, parameters)
            self._models[entry.name] = await self._load_entry(entry)
        ready = [m.name for m in self._models.values() if m.versions]
        logger.info("torch runtime on %s serving %s", self._device, ready)

    async def _load_entry(self, entry: RepositoryEntry) -> _Model:
        model = _Model(entry.name, entry.spec, entry.error or "")
        if entry.spec is None:
            return model
        loop = asyncio.get_running_loop()
        try:
            for version in entry.spec.versions:
                loaded = await loop.run_in_executor(self._loader, self._load_version, entry.spec, version)
                model.versions[version] = loaded
        except Exception as exc:  # noqa: BLE001 - a model that fails to load is UNAVAILABLE
            await self._drain(model)
            model.versions.clear()
            model.error = f"failed to load TorchScript: {summarize(exc)}"
            logger.warning("model '%s' is unavailable: %s", entry.name, model.error)
        return model

    def _load_version(self, spec: ModelSpec, version: int) -> _Version:
        signature = spec.signature()
        strings = frozenset(t.name for t in signature.inputs if t.datatype == "BYTES")
        call = _Reshaped.wrap(
            TorchScriptModel(
                spec.model_file(version),
                [t.name for t in signature.inputs],
                [t.name for t in signature.outputs],
                [NUMPY_BY_DATATYPE[t.datatype] for t in signature.outputs],
                self._device,
                strings,
            ),
            spec,
        )
        threads = InstanceThreads(spec.instances, f"torch-{spec.name}-{version}")
        statistics = ModelStatistics()

        async def execute(inputs: Tensors) -> tuple[Tensors, Timings]:
            return await threads.run(call, inputs)

        scheduler = Scheduler(execute, statistics, spec.max_batch_size, spec.dynamic_batching, spec.instances)
        return _Version(scheduler, statistics, threads, strings)

    async def stop(self) -> None:
        self._stopped = True
        threads = [version.threads for model in self._models.values() for version in model.versions.values()]
        for model in self._models.values():
            await self._drain(model)

        def join() -> None:  # off the loop: an execution whose requests were all cancelled may still run
            self._loader.shutdown()
            for instances in threads:
                instances.shutdown()

        await asyncio.to_thread(join)

    def healthy(self) -> bool:
        """False once stopped, when a scheduler failed, or when an execution is wedged."""
        if self._stopped:
            return False
        problem = self._problem()
        if problem:
            logger.error("torch runtime is not healthy: %s", problem)
        return not problem

    def _problem(self) -> str:
        now = time.perf_counter_ns()
        serving = [
            (f"model '{model.name}' version {number}", version)
            for model in self._models.values()
            for number, version in model.versions.items()
        ]
        for name, version in serving + self._draining:
            if version.scheduler.failure:
                return f"{name}: {version.scheduler.failure}"
            started = version.scheduler.oldest_execution_ns()
            if started is not None and now - started > self._execution_timeout_ns:
                return (
                    f"{name}: an execution has run for {(now - started) / 1e9:.0f} s, past "
                    f"execution_timeout_s {self._execution_timeout_ns / 1e9:g}"
                )
        return ""

    def device(self) -> str:
        return str(self._device)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "triton", "version": TRITON_VERSION, "extensions": EXTENSIONS}

    def index(self) -> list[ModelState]:
        rows = []
        for model in self._models.values():
            if not model.versions:
                rows.append(ModelState(model.name, None, "UNAVAILABLE", model.error or "unloaded"))
            rows.extend(ModelState(model.name, str(v), "READY") for v in model.versions)
        return rows

    def _model(self, name: str) -> _Model:
        try:
            return self._models[name]
        except KeyError:
            raise unknown_model(name) from None

    def resolve(self, model: str, version: str | None) -> str:
        number = None if version is None else model_version(version)  # Triton reads it first
        entry = self._model(model)
        known = entry.spec.versions if entry.spec is not None else ()
        return pick_version(model, number, known, sorted(entry.versions), lambda: entry.error or "unloaded")

    def _spec(self, model: str) -> ModelSpec:
        spec = self._model(model).spec
        if spec is None:
            raise ModelNotReadyError(f"model '{model}' is not ready: {self._models[model].error}")
        return spec

    def signature(self, model: str, version: str) -> ModelSignature:
        return self._spec(model).signature()

    def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        resolved = self.resolve(model, version)
        spec = self._spec(model)
        signature = spec.signature()
        versions = [resolved] if version is not None else [str(v) for v in self._models[model].versions]
        return {
            "name": model,
            "versions": versions,
            "platform": spec.config.platform,
            "inputs": [signature.tensor_metadata(t) for t in signature.inputs],
            "outputs": [signature.tensor_metadata(t) for t in signature.outputs],
        }

    def config(self, model: str, version: str | None) -> dict[str, Any]:
        self.resolve(model, version)
        return self._spec(model).config_dict()

    def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        names = [model] if model is not None else list(self._models)
        stats = []
        for name in names:
            entry = self._model(name)
            resolved = self.resolve(name, version) if model is not None else None
            for number, loaded in sorted(entry.versions.items()):
                if version is None or str(number) == resolved:
                    stats.append(loaded.statistics.as_dict(name, str(number)))
        return {"model_stats": stats}

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        output_names: list[str],
        options: InferOptions = NO_OPTIONS,
    ) -> dict[str, np.ndarray]:
        """Priority and timeout do not apply (one FIFO queue per model); sequences are refused."""
        if options.sequence_id or options.sequence_start or options.sequence_end:
            raise InvalidInputError(
                f"model '{model}' is not a sequence model (no sequence_batching): "
                "sequence_id, sequence_start and sequence_end do not apply"
            )
        loaded = self._models[model].versions.get(int(version))
        if loaded is None:
            raise ModelNotReadyError(f"model '{model}' version {version} was unloaded")
        if loaded.string_inputs:
            inputs = {
                name: _text(name, a) if name in loaded.string_inputs else a for name, a in inputs.items()
            }
        outputs = await loaded.scheduler.submit(inputs)
        return {name: outputs[name] for name in output_names}

    async def in_repository(self, model: str) -> bool:
        await self._refresh(model)
        return (self._repository / model).is_dir()

    async def _refresh(self, model: str) -> None:
        """The mirror's copy of `model` brought up to date (a repository on object storage)."""
        if self._fetch is not None:
            try:
                await self._fetch(model)
            except StorageError as exc:
                raise ModelNotReadyError(f"failed to load '{model}': {exc}") from None

    async def load(self, model: str, parameters: LoadParameters = NO_PARAMETERS) -> None:
        """(Re)load from the repository; a `config` override replaces config.pbtxt, as in Triton."""
        await self._refresh(model)
        model_dir = self._repository / model
        if not model_dir.is_dir():
            raise load_not_polled(model, f"no directory '{model}' in the model repository")
        loaded = await self._load_entry(_entry(model_dir, parameters))
        if not loaded.versions:
            # Like Triton in EXPLICIT mode: a failed reload leaves the loaded versions serving.
            self._models.setdefault(model, loaded)
            raise ModelNotReadyError(f"failed to load '{model}': {loaded.error}")
        previous = self._models.get(model)
        self._models[model] = loaded
        if previous is not None:
            await self._drain(previous)

    async def unload(self, model: str) -> None:
        entry = self._model(model)
        self._models[model] = _Model(model, entry.spec, "unloaded")
        await self._drain(entry)

    async def _drain(self, model: _Model) -> None:
        """Answer the model's queued requests, then let its threads end once idle (never waits on them).

        Until then its versions stay in the health check: a wedged one must still fail it.
        """
        draining = [(f"model '{model.name}' version {n} (unloading)", v) for n, v in model.versions.items()]
        self._draining += draining
        try:
            for _, version in draining:
                await version.scheduler.drain()
                version.threads.shutdown(wait=False)
        finally:
            for entry in draining:
                self._draining.remove(entry)


def _entry(model_dir: Path, parameters: LoadParameters) -> RepositoryEntry:
    """The repository entry a load reads: config.pbtxt, or the load's `config` override."""
    try:
        return RepositoryEntry(model_dir.name, spec=load_model_spec(model_dir, parameters.get("config")))
    except ModelEntryError as exc:
        return RepositoryEntry(model_dir.name, error=str(exc))


def _text(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES input as the `str` TorchScript takes: UTF-8, decoded before it is queued, so that
    bytes that are not text are this request's 400, not its batch's failure."""
    try:
        text = [value.decode() for value in array.flat]
    except UnicodeDecodeError:
        raise InvalidInputError(
            f"input '{name}' holds bytes that are not UTF-8 text: the torch runtime hands strings to "
            "TorchScript as str (runtime: triton passes any bytes, as Triton's PyTorch backend does)"
        ) from None
    strings = np.empty(array.shape, OBJECT)
    strings.reshape(-1)[:] = text
    return strings
