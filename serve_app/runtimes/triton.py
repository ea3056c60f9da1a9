"""The Triton runtime: each replica embeds Triton in-process (`import tritonserver`).

Requests go to Triton's own scheduler concurrently (`async_infer`), so its dynamic batcher
and instance groups work; metadata, config, readiness and statistics are Triton's. Where
Triton has no PyTorch backend (the CPU build of `serve_app.triton_cpu`), TorchScript models
load through the Python-backend shim with load overrides, and what Triton reports about them
is turned back into the user's config so clients see the repository as written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from serve_app import triton_cpu
from serve_app.config import AppArgs
from serve_app.errors import ModelNotFoundError, ModelNotReadyError, from_triton
from serve_app.placement import Placement
from serve_app.repository import (
    TORCHSCRIPT_BACKEND,
    TORCHSCRIPT_PLATFORM,
    ModelEntryError,
    ModelSignature,
    ModelSpec,
    discover,
    load_model_spec,
)
from serve_app.runtimes.base import ModelState

if TYPE_CHECKING:
    import tritonserver

logger = logging.getLogger(__name__)

NGC_BACKENDS = Path("/opt/tritonserver/backends")
INSTALL_HINT = (
    "install Triton's in-process Python API into this environment with "
    "`python -m serve_app.triton_cpu install` (CPU build), or run the NGC tritonserver image "
    "(configs/Dockerfile); or set args.runtime: torch"
)
_INJECTED = (
    triton_cpu.TORCHSCRIPT_DIR_PARAMETER,
    triton_cpu.TORCHSCRIPT_FILENAME_PARAMETER,
    triton_cpu.TORCH_THREADS_PARAMETER,
)


def _import_tritonserver() -> Any:
    try:
        import tritonserver
    except ImportError as exc:
        raise RuntimeError(f"runtime triton: cannot import tritonserver ({exc}); {INSTALL_HINT}") from exc
    return tritonserver


def _reason(text: str | None) -> str:
    """Triton's reason without the Python traceback the backend stub appends ("At: ...")."""
    return (text or "").split("\n\nAt:\n")[0].strip()


def _user_config(config: dict[str, Any]) -> dict[str, Any]:
    """Triton's config of a shim-loaded model as the repository wrote it (inverse of the overrides)."""
    parameters = config.get("parameters", {})
    return config | {
        "platform": TORCHSCRIPT_PLATFORM,
        "backend": TORCHSCRIPT_BACKEND,
        "default_model_filename": parameters[triton_cpu.TORCHSCRIPT_FILENAME_PARAMETER]["string_value"],
        "parameters": {key: value for key, value in parameters.items() if key not in _INJECTED},
    }


def _settle(future: asyncio.Future[BaseException | None], outcome: BaseException | None) -> None:
    if not future.done():
        future.set_result(outcome)


class TritonRuntime:
    name = "triton"

    def __init__(self, args: AppArgs, placement: Placement) -> None:
        self._args = args
        self._placement = placement
        self._server: tritonserver.Server | None = None
        self._errors: tuple[type[Exception], ...] = ()
        self._native = False  # Triton has the PyTorch backend: no shim
        self._stopped = False
        self._versions: dict[str, tuple[int, ...]] = {}  # versions Triton knows, by model
        self._signatures: dict[str, ModelSignature] = {}  # loaded models
        self._entry_errors: dict[str, str] = {}  # entries never handed to Triton, and why

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        tritonserver = _import_tritonserver()
        self._errors = (tritonserver.TritonError,)
        options = self._options(tritonserver)
        self._native = Path(options.backend_directory, "pytorch").is_dir()
        os.environ.update(triton_cpu.environment_for_stub())
        try:
            self._server = tritonserver.Server(options).start(wait_until_ready=True, timeout=60)
        except tritonserver.TritonError as exc:
            raise RuntimeError(f"runtime triton: Triton did not start ({exc}); {INSTALL_HINT}") from exc
        try:
            # One at a time: concurrent loads fork Python-backend stubs concurrently, which
            # aborts the replica inside gRPC's fork handlers (seen with Ray's gRPC path on).
            for entry in discover(self._args.model_repository):
                if entry.spec is None:
                    self._entry_errors[entry.name] = entry.error or "invalid entry"
                else:
                    await self._load(entry.spec)
            self._refresh_versions()
        except BaseException:  # e.g. cancelled: `auto` must not fall back beside a running Triton
            await self.stop()
            raise
        backend = "PyTorch backend" if self._native else "Python-backend TorchScript shim"
        logger.info(
            "triton runtime (%s in %s) serving %s",
            backend,
            options.backend_directory,
            sorted(self._signatures),
        )

    def _options(self, tritonserver: Any) -> tritonserver.Options:
        triton = self._args.triton
        backends = triton.backend_directory
        if backends is None:
            backends = str(NGC_BACKENDS) if NGC_BACKENDS.is_dir() else triton_cpu.backend_directory()
        if backends is None:
            raise RuntimeError(f"runtime triton: no Triton backend directory found; {INSTALL_HINT}")
        gpu = bool(self._placement.gpu_ids) and torch.cuda.is_available()
        return tritonserver.Options(
            model_repository=str(self._args.model_repository),
            model_control_mode=tritonserver.ModelControlMode.EXPLICIT,
            strict_model_config=triton.strict_model_config,
            # Strict readiness makes the server unready while any model is UNAVAILABLE, and
            # check_health would then replace every replica of a repository with a broken entry.
            strict_readiness=False,
            exit_timeout=triton.exit_timeout_s,
            log_verbose=triton.log_verbose,
            log_info=triton.log_info,
            log_warn=True,
            log_error=True,
            metrics=triton.metrics,
            cpu_metrics=triton.metrics,
            gpu_metrics=triton.metrics and gpu,
            # Pinned host memory only helps copies to a GPU; without CUDA Triton cannot allocate it.
            pinned_memory_pool_size=(1 << 28) if gpu else 0,
            backend_directory=backends,
        )

    async def _load(self, spec: ModelSpec) -> str | None:
        """Load one model; return why it failed (a thread: Triton's load blocks until done)."""
        if self._native:
            parameters = None
        else:
            threads = self._args.torch_threads or self._placement.threads()
            parameters = triton_cpu.torchscript_load_parameters(spec.path, spec.config_dict(), threads)
        server = self._triton()
        failure = None
        try:
            await asyncio.to_thread(server.load, spec.name, parameters)
        except self._errors as exc:
            failure = _reason(from_triton(exc).args[0])
            logger.warning("model '%s' failed to load: %s", spec.name, failure)
        # A failed reload can leave the previous versions serving.
        if server.model(spec.name).ready():
            self._signatures[spec.name] = ModelSignature.from_config(self._config(spec.name, -1))
        else:
            self._signatures.pop(spec.name, None)
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
        return self._triton().metadata()

    def device(self) -> str:
        """Where Triton runs the models: a loaded model with a KIND_GPU instance group is on the GPU.

        With num_gpus: 1 Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU, so Triton's GPU 0 is it.
        """
        on_gpu = any(
            group.get("kind") == "KIND_GPU"
            for name in self._signatures
            for group in self._config(name, -1).get("instance_group", ())
        )
        if not on_gpu:
            return "cpu"
        ray_ids = ",".join(self._placement.gpu_ids)
        return f"cuda:0 (GPU {ray_ids})" if ray_ids else "cuda:0"

    def _refresh_versions(self) -> None:
        """Triton's index (every repository directory) → the versions it has loaded or tried."""
        versions: dict[str, list[int]] = {}
        for name, version in self._triton().models():
            versions.setdefault(name, [])
            if version >= 0:
                versions[name].append(version)
        self._versions = {name: tuple(sorted(v)) for name, v in versions.items()}

    def index(self) -> list[ModelState]:
        """Triton's index; entries Triton never loaded are one UNAVAILABLE row with our reason."""
        rows: dict[ModelState, None] = {}
        for (name, version), model in sorted(self._triton().models().items()):
            if name in self._entry_errors:
                row = ModelState(name, None, "UNAVAILABLE", self._entry_errors[name])
            elif model.state is None:
                row = ModelState(name, None, "UNAVAILABLE", "not loaded")
            else:
                reason = "" if model.state == "READY" else _reason(model.reason)
                row = ModelState(name, str(version), model.state, reason)
            rows[row] = None
        return list(rows)

    def _why_not_ready(self, model: str) -> str:
        reasons = [row.reason for row in self.index() if row.name == model and row.reason]
        return reasons[0] if reasons else "not ready"

    def resolve(self, model: str, version: str | None) -> str:
        server = self._triton()
        if model not in self._versions:
            raise ModelNotFoundError(f"unknown model '{model}'")
        ready = [v for v in self._versions[model] if server.model(model, v).ready()]
        if not ready:
            raise ModelNotReadyError(f"model '{model}' is not ready: {self._why_not_ready(model)}")
        if version is None:
            return str(ready[-1])
        # isdecimal, not isdigit: int() refuses digits such as "²". "01" names version 1.
        if not version.isdecimal() or int(version) not in ready:
            raise ModelNotFoundError(f"model '{model}' has no ready version '{version}'")
        return str(int(version))

    def signature(self, model: str, version: str) -> ModelSignature:
        try:
            return self._signatures[model]
        except KeyError:
            raise ModelNotReadyError(f"model '{model}' is not ready: {self._why_not_ready(model)}") from None

    def _config(self, model: str, version: int) -> dict[str, Any]:
        config = self._triton().model(model, version).config()
        return config if self._native else _user_config(config)

    def metadata(self, model: str, version: str | None) -> dict[str, Any]:
        resolved = self.resolve(model, version)
        metadata = self._triton().model(model, -1 if version is None else int(resolved)).metadata()
        return metadata if self._native else metadata | {"platform": TORCHSCRIPT_PLATFORM}

    def config(self, model: str, version: str | None) -> dict[str, Any]:
        return self._config(model, int(self.resolve(model, version)))

    def statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        if model is None:  # Triton's empty model name: every loaded model
            return self._triton().model("").statistics()
        resolved = self.resolve(model, version)
        return self._triton().model(model, -1 if version is None else int(resolved)).statistics()

    # --- inference and model control --------------------------------------------------------

    async def infer(
        self, model: str, version: str, inputs: dict[str, np.ndarray], output_names: list[str]
    ) -> dict[str, np.ndarray]:
        """One Triton request; concurrent calls meet in Triton's scheduler, which batches them."""
        # Triton reads an input's bytes from its data pointer, ignoring strides.
        arrays = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        outputs: dict[str, Any] = {}
        try:
            responses = (
                self._triton().model(model, int(version)).async_infer(inputs=arrays, output_memory_type="cpu")
            )
            try:
                async for response in responses:
                    outputs.update(response.outputs)
            except asyncio.CancelledError:
                responses.cancel()
                raise
        except self._errors as exc:
            error = from_triton(exc)
            if isinstance(error, ModelNotFoundError):  # resolved a moment ago: unloaded since
                raise ModelNotReadyError(f"model '{model}' version {version} is not ready: {error}") from None
            raise error from None
        return {name: np.from_dlpack(outputs[name]) for name in output_names}

    async def load(self, model: str, parameters: dict[str, Any]) -> None:
        model_dir = self._args.model_repository / model
        if not model_dir.is_dir():
            raise ModelNotFoundError(f"no directory '{model}' in the model repository")
        try:
            spec = load_model_spec(model_dir)
        except ModelEntryError as exc:
            # Like Triton in EXPLICIT mode: a failed reload leaves the loaded versions serving.
            if model not in self._signatures:
                self._entry_errors[model] = str(exc)
                self._refresh_versions()
            raise ModelNotReadyError(f"failed to load '{model}': {exc}") from None
        self._entry_errors.pop(model, None)
        failure = await self._load(spec)
        self._refresh_versions()
        if failure is not None:
            raise ModelNotReadyError(f"failed to load '{model}': {failure}")

    async def unload(self, model: str) -> None:
        """Triton's unload lets requests already running complete; this waits until it has."""
        if model not in self._versions:
            raise ModelNotFoundError(f"unknown model '{model}'")
        server = self._triton()
        try:
            await asyncio.to_thread(server.unload, model, wait_until_unloaded=True)
        except self._errors as exc:
            raise from_triton(exc) from None
        self._signatures.pop(model, None)
