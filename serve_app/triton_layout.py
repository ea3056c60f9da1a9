"""Where `python -m serve_app.triton_install` puts Triton in this environment.

Read at run time by the Triton runtime and written by the installer; nothing here builds or
downloads. The wheel's binaries carry RPATH `$ORIGIN/../../../../nvidia_pytriton.libs`, so the
backends sit four levels below the directory holding the core's libraries.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any

# The Triton release installed (the core of nvidia-pytriton 0.7.0), whose API both runtimes serve.
TRITON_VERSION = "2.51.0"
LIBS = "nvidia_pytriton.libs"
BACKENDS = Path("opt", "tritonserver", "backends")
STAMP = "installed.json"
INSTALL_COMMAND = "python -m serve_app.triton_install install"


def install_root() -> Path:
    """Directory holding the Triton libraries and backends of this environment."""
    return Path(sys.prefix) / "lib" / "serve_app_triton"


def requests_extension_path() -> Path:
    """serve_app's compiled request path into the core (serve_app/runtimes/triton/request_extension.cc)."""
    return install_root() / "python" / f"serve_app_triton_requests{sysconfig.get_config_var('EXT_SUFFIX')}"


def backends_root() -> Path:
    return install_root() / BACKENDS


def installed() -> dict[str, Any]:
    """What the installer recorded (versions built against); empty when nothing is installed."""
    try:
        return json.loads((install_root() / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def backend_directory() -> str | None:
    """Triton's `backend_directory` for the installed build; None if it is not installed."""
    backends = backends_root()
    ready = (backends / "python" / "libtriton_python.so").is_file() and (
        backends / "pytorch" / "libtriton_pytorch.so"
    ).is_file()
    return str(backends) if ready else None


def pytorch_backend_problem() -> str | None:
    """Why the installed PyTorch backend cannot serve this environment's torch, if it cannot.

    The backend links the torch wheel's libtorch by path and C++ ABI: after a torch upgrade it
    must be rebuilt, which the installer does when run again.
    """
    built_for = installed().get("torch")
    try:
        current = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return f"torch is not installed; the PyTorch backend was built against torch {built_for}"
    if built_for != current:
        return (
            f"the PyTorch backend was built against torch {built_for}, this environment has torch "
            f"{current}: run `{INSTALL_COMMAND}` to rebuild it"
        )
    return None


def environment_for_stub() -> dict[str, str]:
    """Environment updates that let Python-backend models run this interpreter's packages.

    The python backend stub runs Python isolated (PYTHONPATH is ignored) and takes its
    site-packages from the first `python3` on PATH, so this interpreter's bin must come first.
    """
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] == bin_dir:
        return {}
    return {"PATH": os.pathsep.join([bin_dir, path]) if path else bin_dir}
