"""`python -m serve_app.triton_install install [--gpu] [--force]`, `install --extension-only --core
DIR` and `... check`.

Idempotent: what was built, and against which torch, is recorded in the install root; a run
rebuilds only what no longer matches (a torch upgrade rebuilds just the PyTorch backend).
`--extension-only` builds just serve_app's request extension against a Triton core installed
by other means (the NGC image's /opt/tritonserver), whose `tritonserver` package serves it.
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
from serve_app.triton_install.build import InstallError, require_tool
from serve_app.triton_layout import (
    LIBS,
    STAMP,
    backend_directory,
    install_root,
    installed,
    requests_extension_path,
)

# The stamp's record of an extension built against a core outside the install root.
EXTENSION_CORE = "extension_core"


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
        or EXTENSION_CORE in installed()
    )
    if not (rebuild_backend or rebuild_extension):
        print(f"Triton {core.TRITON_VERSION} with its PyTorch backend (torch {backend_wanted['torch']}) "
              f"is already installed in {install_root()} (use --force to rebuild)")  # fmt: skip
        return
    core.check_prerequisites()
    recorded = {key: value for key, value in installed().items() if key != EXTENSION_CORE}
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
            requests_extension.build(core_source / "include", install_root() / LIBS / core.core_library())
    (install_root() / STAMP).write_text(json.dumps({**recorded, **extension_wanted}))


def existing_core_library(core_dir: Path) -> Path:
    """The one `libtritonserver*.so` in `core_dir` or a folder just below it (NGC: lib/)."""
    found = sorted({*core_dir.glob("libtritonserver*.so"), *core_dir.glob("*/libtritonserver*.so")})
    if len(found) != 1:
        what = "no libtritonserver*.so" if not found else f"several cores ({', '.join(map(str, found))})"
        raise InstallError(f"--core {core_dir}: {what} in it or a folder just below it")
    return found[0]


def install_extension(core_dir: Path) -> None:
    """Build only serve_app's request extension against an existing core.

    Its headers are the core's own `include/` where it ships one (the NGC image does), else
    the core sources of the release this installer builds (SERVE_APP_TRITON_CORE_SRC or git).
    """
    library = existing_core_library(core_dir)
    require_tool("g++", "it compiles the extension (apt-get install g++)")
    core.ensure_pybind11()
    header = Path("triton", "core", "tritonserver.h")
    shipped = next((folder / "include" for folder in (core_dir, library.parent.parent)
                    if (folder / "include" / header).is_file()), None)  # fmt: skip
    if shipped is not None:
        requests_extension.build(shipped, library)
    else:
        with core.core_sources() as source:
            requests_extension.build(source / "include", library)
    recorded = {
        **installed(),
        "requests_extension": requests_extension.source_digest(),
        EXTENSION_CORE: str(library),
    }
    install_root().mkdir(parents=True, exist_ok=True)
    (install_root() / STAMP).write_text(json.dumps(recorded))
    print(f"built serve_app's request extension against {library}: {requests_extension_path()}")


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
    install_command.add_argument(
        "--extension-only",
        action="store_true",
        help="build only serve_app's request extension, against the core given by --core",
    )
    install_command.add_argument(
        "--core",
        type=Path,
        metavar="DIR",
        help="an existing Triton core for --extension-only: DIR or DIR/lib holds libtritonserver*.so "
        "(the NGC image: /opt/tritonserver)",
    )
    check_command = commands.add_parser("check", help="start a server and run a TorchScript model through it")
    check_command.add_argument(
        "--backends",
        metavar="DIR",
        help="another install's backends (the NGC image: /opt/tritonserver/backends)",
    )
    args = parser.parse_args(argv)
    if args.command == "install" and args.extension_only != (args.core is not None):
        parser.error("--extension-only and --core go together")
    if args.command == "install" and args.extension_only and (args.gpu or args.force):
        parser.error("--extension-only builds the extension alone: no --gpu or --force")
    try:
        if args.command == "install" and args.extension_only:
            install_extension(args.core)
        elif args.command == "install":
            install(args.force, args.gpu)
        else:
            from serve_app.triton_install.smoke import check

            check(args.backends)
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
