"""`python -m serve_app.triton_install install [--gpu] [--force]` and `... check`.

Idempotent: what was built, and against which torch, is recorded in the install root; a run
rebuilds only what no longer matches (a torch upgrade rebuilds just the PyTorch backend).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from serve_app.triton_install import core, pytorch_backend, requests_extension
from serve_app.triton_install.build import InstallError
from serve_app.triton_layout import STAMP, backend_directory, install_root, installed, requests_extension_path


def _core_wanted() -> dict[str, Any]:
    return {"pytriton": core.PYTRITON_REQUIREMENT, "core": core.BRANCH, "python": core.PY}


def _core_current() -> bool:
    try:
        tritonserver = metadata.version("tritonserver")
    except metadata.PackageNotFoundError:
        return False
    recorded = installed()
    core_files = (install_root() / "opt" / "tritonserver" / "backends" / "python").is_dir()
    return (
        core_files
        and tritonserver == core.TRITON_VERSION
        and all(recorded.get(key) == value for key, value in _core_wanted().items())
    )


def install(force: bool = False, gpu: bool = False) -> None:
    """Install what is missing or stale: the core and bindings, the PyTorch backend, serve_app's
    request extension (rebuilt alone when only its source changed)."""
    backend_wanted = {
        **pytorch_backend.torch_build_facts(),
        "gpu": gpu,
        "pytorch_backend": pytorch_backend.BRANCH,
    }
    extension_wanted = {"requests_extension": requests_extension.source_digest()}
    rebuild_core = force or not _core_current()
    rebuild_backend = (
        rebuild_core
        or backend_directory() is None
        or any(installed().get(key) != value for key, value in backend_wanted.items())
    )
    rebuild_extension = (
        rebuild_core
        or not requests_extension_path().is_file()
        or installed().get("requests_extension") != extension_wanted["requests_extension"]
    )
    if not (rebuild_backend or rebuild_extension):
        print(f"Triton {core.TRITON_VERSION} with its PyTorch backend (torch {backend_wanted['torch']}) "
              f"is already installed in {install_root()} (use --force to rebuild)")  # fmt: skip
        return
    core.check_prerequisites()
    recorded = installed()
    with (
        tempfile.TemporaryDirectory(prefix="serve-app-triton-") as scratch,
        core.core_sources() as core_source,
    ):
        work = Path(scratch)
        if rebuild_core:
            core.install_core(core_source, work)
            recorded = _core_wanted()
            (install_root() / STAMP).write_text(json.dumps(recorded))
        if rebuild_backend:
            with pytorch_backend.backend_sources() as backend_source:
                pytorch_backend.build(backend_source, core_source, gpu, work)
            recorded = {**recorded, **backend_wanted, "core_library": core.core_library()}
            (install_root() / STAMP).write_text(json.dumps(recorded))
        if rebuild_extension:
            requests_extension.build(core_source, core.core_library())
    (install_root() / STAMP).write_text(json.dumps({**recorded, **extension_wanted}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.triton_install", description="In-process Triton for this environment."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install_command = commands.add_parser(
        "install", help="build and install tritonserver and its PyTorch backend"
    )
    install_command.add_argument("--force", action="store_true", help="rebuild everything")
    install_command.add_argument(
        "--gpu", action="store_true", help="PyTorch backend with TRITON_ENABLE_GPU (CUDA torch wheel, nvcc)"
    )
    commands.add_parser("check", help="start a server and run a TorchScript model through it")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(args.force, args.gpu)
        else:
            from serve_app.triton_install.smoke import check

            check()
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
