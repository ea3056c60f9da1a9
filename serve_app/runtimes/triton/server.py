"""The in-process Triton server as the app's args configure it: where Triton and its backends
are, and its `tritonserver.Options`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve_app import triton_layout
from serve_app.config import AppArgs
from serve_app.placement import Placement

if TYPE_CHECKING:
    import tritonserver

NGC_BACKENDS = Path("/opt/tritonserver/backends")
INSTALL_HINT = (
    f"install Triton's in-process Python API into this environment with `{triton_layout.INSTALL_COMMAND}` "
    "(CPU build), or run the NGC tritonserver image (configs/Dockerfile); or set args.runtime: torch"
)


def import_tritonserver() -> Any:
    """Triton's in-process Python API, or an error that says how to install it."""
    try:
        import tritonserver
    except ImportError as exc:
        raise RuntimeError(f"runtime triton: cannot import tritonserver ({exc}); {INSTALL_HINT}") from exc
    return tritonserver


def cuda_available() -> bool:
    import torch  # only on replicas that Ray gave a GPU

    return torch.cuda.is_available()


def server_options(tritonserver: Any, args: AppArgs, placement: Placement) -> tritonserver.Options:
    """Triton's options for this replica: explicit model control over the app's repository, the
    backends found here (the NGC image's, or the installer's), GPU features only with a GPU."""
    triton = args.triton
    backends = triton.backend_directory
    if backends is None and NGC_BACKENDS.is_dir():
        backends = str(NGC_BACKENDS)
    elif backends is None:
        backends = triton_layout.backend_directory()
        if backends is None:
            raise RuntimeError(f"runtime triton: no Triton backend directory found; {INSTALL_HINT}")
        problem = triton_layout.pytorch_backend_problem()
        if problem:
            raise RuntimeError(f"runtime triton: {problem}")
    gpu = bool(placement.gpu_ids) and cuda_available()
    return tritonserver.Options(
        model_repository=str(args.model_repository),
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
