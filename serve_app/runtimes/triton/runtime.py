"""The Triton runtime: each replica embeds Triton in-process (`import tritonserver`).

Every model directory goes to Triton as it is, whatever its backend or platform, from a local
repository or from object storage (s3://, gs://, as://, which Triton reads itself): Triton loads
it (TorchScript through its own PyTorch backend, natively, on the CPU build as on the NGC
image) or says why not. Requests go to Triton's scheduler concurrently (`async_infer`), so its
dynamic batcher, sequence batcher and instance groups work; metadata, config, readiness and
statistics are Triton's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serve_app import repository as configs
from serve_app import triton_layout
from serve_app.config import AppArgs
from serve_app.errors import (
    ModelNotFoundError,
    ModelNotReadyError,
    from_triton,
    load_not_polled,
    unknown_model,
)
from serve_app.placement import Placement
from serve_app.runtimes import base
from serve_app.runtimes.triton.bindings_caller import BindingsCaller
from serve_app.runtimes.triton.extension_caller import ExtensionCaller, extension
from serve_app.runtimes.triton.model_call import ModelCall
from serve_app.runtimes.triton.niceness import match_process_niceness
from serve_app.runtimes.triton.server import INSTALL_HINT, import_tritonserver, server_options
from serve_app.storage import RepositoryURL, unreadable

if TYPE_CHECKING:
    import tritonserver

logger = logging.getLogger(__name__)

# The PyTorch backend's thread setting (at::set_num_threads, process-wide). Its inter-op
# counterpart is left alone: libtorch refuses to set it twice, and every model would.
INTRA_OP_THREADS = "INTRA_OP_THREAD_COUNT"
# How often an unload checks that Triton has finished it. tritonserver's default (0.1 s) made
# every eviction of on-demand placement take 100 ms, and the load it made room for wait as long.
UNLOAD_POLL_S = 0.005


def _reason(text: str | None) -> str:
    """Triton's reason without the Python traceback a python-backend stub appends ("At: ...")."""
    return (text or "").split("\n\nAt:\n")[0].strip()


def _one_line(message: str) -> str:
    """A multi-line error (TorchScript's interpreter traceback) as its first and last lines."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return message if len(lines) < 2 else f"{lines[0]} {lines[-1]}"


@dataclass
class _LoadPlan:
    """What `_load` hands Triton: load parameters, and what it should know about the model."""

    parameters: dict[str, str] | None = None
    forks: bool = False  # a python-backend model: its load forks a stub process
    config_problem: str = ""  # why config.pbtxt did not parse here


def _settle(future: asyncio.Future[BaseException | None], outcome: BaseException | None) -> None:
    if not future.done():
        future.set_result(outcome)


class TritonRuntime:
    name = "triton"

    def __init__(self, args: AppArgs, placement: Placement) -> None:
        self._args = args
        self._placement = placement
        # A repository on object storage: Triton reads it; configs are not read here beforehand.
        self._remote = args.model_repository if isinstance(args.model_repository, RepositoryURL) else None
        self._server: tritonserver.Server | None = None
        self._metadata: dict[str, Any] | None = None
        self._errors: tuple[type[Exception], ...] = ()
        self._requests: ExtensionCaller | BindingsCaller | None = None
        self._calls: dict[tuple[str, int], ModelCall] = {}  # by model and version, built at first use
        self._stopped = False
        self._versions: dict[str, tuple[int, ...]] = {}  # versions Triton knows, by model
        self._signatures: dict[str, configs.ModelSignature] = {}  # loaded models
        self._on_gpu: set[str] = set()  # loaded models with a KIND_GPU instance group
        self._load_errors: dict[str, str] = {}  # why each model's last load failed
        # Python-backend loads fork a stub each; concurrent forks have aborted replicas inside
        # gRPC's fork handlers, so those load one at a time (everything else loads in parallel).
        self._fork_lock = asyncio.Lock()

    @classmethod
    async def create(
        cls, args: AppArgs, placement: Placement, wanted: base.Wanted = base.everything
    ) -> TritonRuntime:
        """Triton started over the app's repository, local or on object storage (Triton reads it)."""
        runtime = cls(args, placement)
        await runtime.start(wanted)
        return runtime

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, wanted: base.Wanted = base.everything) -> None:
        tritonserver = import_tritonserver()
        self._errors = (tritonserver.TritonError,)
        options = server_options(tritonserver, self._args, self._placement)
        os.environ.update(triton_layout.environment_for_stub())
        if self._remote:
            # The CPU build's PyTorch backend shares this process's libtorch: its thread setting is
            # the models' default when Triton reads the configs itself. (A local repository's
            # models get theirs through a config override, and torch is not imported.)
            import torch

            torch.set_num_threads(self._threads())
        try:
            self._server = tritonserver.Server(options).start(wait_until_ready=True, timeout=60)
        except tritonserver.TritonError as exc:
            if self._remote:
                raise unreadable(self._remote, exc) from exc
            raise RuntimeError(f"runtime triton: Triton did not start ({exc}); {INSTALL_HINT}") from exc
        self._requests = self._caller_for(self._server)
        try:
            wanted_now = {name: wanted(name) for name in self._repository_models()}
            models = {name: parameters for name, parameters in wanted_now.items() if parameters is not None}
            await asyncio.gather(*(self._load(name, parameters) for name, parameters in models.items()))
            self._after_loads()
        except BaseException:  # e.g. cancelled: `auto` must not fall back beside a running Triton
            await self.stop()
            raise
        logger.info(
            "triton runtime (backends in %s) serving %s", options.backend_directory, sorted(self._signatures)
        )

    def _repository_models(self) -> set[str]:
        """The repository's model directories, as Triton lists them (it reads object storage too)."""
        return {name for name, _ in self._triton().models() if not name.startswith(".")}

    def _threads(self) -> int:
        return self._args.torch_threads or self._placement.threads()

    def _load_plan(self, name: str, parameters: base.LoadParameters) -> _LoadPlan:
        """How to hand a model directory to Triton.

        A load's `config` override (checked by the dataplane) replaces config.pbtxt, as Triton
        takes it. A TorchScript model whose config sets no thread count gets the replica's CPU
        allotment as INTRA_OP_THREAD_COUNT through a config override, so replicas sharing a node
        do not each use every core. A config that does not parse still goes to Triton as it is
        (it may auto-complete a missing one); the parser's message explains Triton's "failed to
        poll". On object storage the configs are Triton's to read: no override of serve_app's
        (the process-wide torch thread setting of `start` applies), and loads run one at a time
        (any may fork a stub).
        """
        override = parameters.get("config")
        repository = self._args.model_repository
        try:
            if override is not None:
                config = configs.config_override(name, override)
            elif isinstance(repository, Path):
                config = configs.parse_config(repository / name)
            else:  # on object storage: Triton alone reads the config
                return _LoadPlan(forks=True)  # its backend is unknown until loaded: one at a time
        except configs.ModelEntryError as exc:
            return _LoadPlan(dict(parameters) or None, config_problem=str(exc))
        plan = _LoadPlan(dict(parameters) or None, forks=config.backend == "python")
        torchscript = (
            config.platform == configs.TORCHSCRIPT_PLATFORM or config.backend == configs.TORCHSCRIPT_BACKEND
        )
        if torchscript and INTRA_OP_THREADS not in config.parameters and isinstance(repository, Path):
            config.parameters[INTRA_OP_THREADS].string_value = str(self._threads())
            plan.parameters = {"config": json.dumps(configs.message_to_dict(config))}
        return plan

    async def _load(self, name: str, parameters: base.LoadParameters = base.NO_PARAMETERS) -> str | None:
        """Load one model; return why it failed (a thread: Triton's load blocks until done)."""
        plan = self._load_plan(name, parameters)
        server = self._triton()
        failure = None
        try:
            if plan.forks:
                async with self._fork_lock:
                    await asyncio.to_thread(server.load, name, plan.parameters)
            else:
                await asyncio.to_thread(server.load, name, plan.parameters)
            self._load_errors.pop(name, None)
        except self._errors as exc:
            failure = _reason(from_triton(exc).args[0])
            if plan.config_problem:
                failure = f"{failure}: {plan.config_problem}"
            self._load_errors[name] = failure
            logger.warning("model '%s' failed to load: %s", name, failure)
        self._forget_calls(name)
        # A failed reload can leave the previous versions serving.
        if server.model(name).ready():
            config = self._config(name, -1)
            self._signatures[name] = configs.ModelSignature.from_config(config)
            if any(group.get("kind") == "KIND_GPU" for group in config.get("instance_group", ())):
                self._on_gpu.add(name)
            else:
                self._on_gpu.discard(name)
        else:
            self._forget(name)
        return failure

    async def stop(self) -> None:
        """Triton's stop waits for requests in flight (exit_timeout), then unloads; bounded here too.

        It runs in a daemon thread so that a stop that hangs can neither block the event loop, which
        delivers the last responses, nor keep the process from exiting.
        """
        if self._server is None or self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[BaseException | None] = loop.create_future()
        server = self._server

        def stop_server() -> None:
            outcome: BaseException | None = None
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - reported by the awaiting coroutine
                outcome = exc
            if not loop.is_closed():
                loop.call_soon_threadsafe(_settle, finished, outcome)

        started = time.monotonic()
        threading.Thread(target=stop_server, name="triton-stop", daemon=True).start()
        try:
            error = await asyncio.wait_for(asyncio.shield(finished), self._args.stop_timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            logger.error("Triton did not stop within %.0f s; leaving it behind", self._args.stop_timeout_s)
            return
        if error is not None:
            logger.warning("Triton stop: %s", error)
        if self._requests is not None:
            self._requests.close()
        logger.info("Triton stopped in %.1f s", time.monotonic() - started)

    def healthy(self) -> bool:
        try:
            return not self._stopped and self._server is not None and self._server.ready()
        except self._errors:
            return False

    def _triton(self) -> tritonserver.Server:
        if self._server is None or self._stopped:
            raise ModelNotReadyError("the Triton server is stopped")
        return self._server

    # --- repository and metadata ------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        """Triton's name, version and extensions: fixed for the server's life, asked once (the call
        costs more than a health check's whole request, and GET /v2 would make it every time)."""
        if self._metadata is None:
            self._metadata = self._triton().metadata()
        return self._metadata

    def device(self) -> str:
        """Where Triton runs the models: a loaded model with a KIND_GPU instance group is on the GPU
        (kept at each load: GET /v2 would otherwise ask Triton for every model's config).

        With num_gpus: 1 Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU, so Triton's GPU 0 is it.
        """
        if not self._on_gpu:
            return "cpu"
        ray_ids = ",".join(self._placement.gpu_ids)
        return f"cuda:0 (GPU {ray_ids})" if ray_ids else "cuda:0"

    def _after_loads(self) -> None:
        """The versions Triton now has; the instance and scheduler threads the loads started
        back at the replica's nice."""
        self._refresh_versions()
        match_process_niceness()

    def _forget(self, model: str) -> None:
        """A model that no longer serves (unloaded, or its reload left no version ready)."""
        self._signatures.pop(model, None)
        self._on_gpu.discard(model)

    def _refresh_versions(self) -> None:
        """Triton's index (every repository directory) → the versions it has loaded or tried."""
        versions: dict[str, list[int]] = {}
        for name, version in self._triton().models():
            versions.setdefault(name, [])
            if version >= 0:
                versions[name].append(version)
        self._versions = {name: tuple(sorted(v)) for name, v in versions.items()}

    def index(self) -> list[base.ModelState]:
        """Triton's index; an entry Triton could not even read is one UNAVAILABLE row with its load error."""
        rows: dict[base.ModelState, None] = {}
        for (name, version), model in sorted(self._triton().models().items()):
            if model.state is None:
                row = base.ModelState(name, None, "UNAVAILABLE", self._load_errors.get(name, "not loaded"))
            else:
                reason = "" if model.state == "READY" else _reason(model.reason)
                row = base.ModelState(name, str(version), model.state, reason)
            rows[row] = None
        return list(rows)

    def _why_not_ready(self, model: str) -> str:
        reasons = [row.reason for row in self.index() if row.name == model and row.reason]
        return reasons[0] if reasons else "not ready"

    def resolve(self, model: str, version: str | None) -> str:
        number = None if version is None else base.model_version(version)  # Triton reads it first
        ready = self._ready_versions(model)
        if not ready and model in self._versions:  # a reload may have replaced them: ask Triton
            self._refresh_versions()
            ready = self._ready_versions(model)
        if model not in self._versions:
            raise unknown_model(model)
        return base.pick_version(
            model, number, self._versions[model], ready, lambda: self._why_not_ready(model)
        )

    def _ready_versions(self, model: str) -> list[int]:
        server = self._triton()
        return [v for v in self._versions.get(model, ()) if server.model(model, v).ready()]

    def signature(self, model: str, version: str) -> configs.ModelSignature:
        try:
            return self._signatures[model]
        except KeyError:
            raise ModelNotReadyError(f"model '{model}' is not ready: {self._why_not_ready(model)}") from None

    def _config(self, model: str, version: int) -> dict[str, Any]:
        return self._triton().model(model, version).config()

    def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        resolved = self.resolve(model, version)
        return self._triton().model(model, -1 if version is None else int(resolved)).metadata()

    def config(self, model: str, version: str | None) -> dict[str, Any]:
        return self._config(model, int(self.resolve(model, version)))

    def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        if model is None:  # Triton's empty model name: every loaded model
            return self._triton().model("").statistics()
        resolved = self.resolve(model, version)
        return self._triton().model(model, -1 if version is None else int(resolved)).statistics()

    # --- inference and model control --------------------------------------------------------

    async def infer(
        self,
        model: str,
        version: str,
        inputs: dict[str, np.ndarray],
        output_names: list[str],
        options: base.InferOptions = base.NO_OPTIONS,
    ) -> dict[str, np.ndarray]:
        """One Triton request; concurrent calls meet in Triton's scheduler, which batches them."""
        key = (model, int(version))
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = self._caller().model_call(model, key[1], self.signature(model, version))
        try:
            outputs = await self._caller().infer(call, call.inputs(inputs), options)
        except self._errors as exc:
            error = from_triton(exc)
            error.args = (_one_line(error.args[0]),)
            if isinstance(error, ModelNotFoundError):  # resolved a moment ago: unloaded since
                raise ModelNotReadyError(f"model '{model}' version {version} is not ready: {error}") from None
            raise error from None
        return {name: outputs[name] for name in output_names}

    @staticmethod
    def _caller_for(server: Any) -> ExtensionCaller | BindingsCaller:
        module = extension()
        if module is None:
            logger.warning(
                "serve_app's Triton request extension is not built: requests take the bindings' slower "
                "path (run `%s`)",
                triton_layout.INSTALL_COMMAND,
            )
            return BindingsCaller(server)
        return ExtensionCaller(server, module)

    def _caller(self) -> ExtensionCaller | BindingsCaller:
        self._triton()  # not stopped
        assert self._requests is not None
        return self._requests

    async def in_repository(self, model: str) -> bool:
        return model in await asyncio.to_thread(self._repository_models)

    async def load(self, model: str, parameters: base.LoadParameters = base.NO_PARAMETERS) -> None:
        """Triton (re)loads the directory, with the load's `config` override if it has one; a
        failed reload leaves the loaded versions serving."""
        if model not in self._repository_models():
            raise load_not_polled(model, f"no directory '{model}' in the model repository")
        failure = await self._load(model, parameters)
        self._after_loads()
        if failure is not None:
            raise ModelNotReadyError(f"failed to load '{model}': {failure}")

    async def unload(self, model: str) -> None:
        """Triton's unload lets requests already running complete; this waits until it has."""
        if model not in self._versions:
            raise unknown_model(model)
        server = self._triton()
        try:
            await asyncio.to_thread(
                server.unload, model, wait_until_unloaded=True, polling_interval=UNLOAD_POLL_S
            )
        except self._errors as exc:
            raise from_triton(exc) from None
        self._forget(model)
        self._forget_calls(model)

    def _forget_calls(self, model: str) -> None:
        for key in [key for key in self._calls if key[0] == model]:
            del self._calls[key]
