"""The Triton core, python backend and `tritonserver` package (bindings compiled here).

The core (libtritonserver 2.51.0) and python backend come from the `nvidia-pytriton` wheel,
unpacked, not installed; the official r24.10 bindings are compiled with pybind11 against the
core under its hashed file name and packaged as a `tritonserver` wheel that pip can list,
upgrade and uninstall.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import shutil
import sys
import sysconfig
import time
import zipfile
from contextlib import AbstractContextManager
from importlib import metadata
from pathlib import Path

from serve_app.triton_install.build import InstallError, require_tool, run, source_tree
from serve_app.triton_layout import BACKENDS, LIBS, TRITON_VERSION, install_root

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
BRANCH = "r24.10"
SOURCE_ENV = "SERVE_APP_TRITON_CORE_SRC"
GIT_URL = "https://github.com/triton-inference-server/core"

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
_BINDINGS_SOURCE = Path("python", "tritonserver", "_c", "tritonserver_pybind.cc")


def check_prerequisites() -> None:
    """Fail early, before downloading anything, on hosts the build cannot work on."""
    require_tool("g++", "it compiles the bindings and the PyTorch backend (apt-get install g++)")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise InstallError(
            f"this Python has no shared libpython{PY}; the python backend stub embeds it, "
            "so use a Python built with --enable-shared"
        )
    if int(metadata.version("numpy").split(".")[0]) >= 2:
        raise InstallError("numpy>=2 breaks the r24.10 python backend stub: pip install 'numpy<2'")


def core_sources() -> AbstractContextManager[Path]:
    """The core r24.10 checkout: its headers serve the PyTorch backend build too."""
    return source_tree(SOURCE_ENV, _BINDINGS_SOURCE, {"core": GIT_URL}, BRANCH)


def core_library() -> str:
    """File name of the installed core (hashed, as the wheel ships it)."""
    return next((install_root() / LIBS).glob("libtritonserver-*.so")).name


def ensure_pybind11() -> None:
    """pybind11 is a build-only dependency: install it when missing."""
    try:
        metadata.version("pybind11")
    except metadata.PackageNotFoundError:
        print("installing pybind11 (build dependency)")
        run([sys.executable, "-m", "pip", "install", "pybind11"], "pip install pybind11")
        importlib.invalidate_caches()


def _stage_binaries(work: Path, layout: Path) -> str:
    """Lay out nvidia-pytriton's core libraries and python backend; return the core's file name."""
    run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(work), PYTRITON_REQUIREMENT],
        f"pip download {PYTRITON_REQUIREMENT}",
    )
    wheel = next(work.glob("nvidia_pytriton-*.whl"))
    backend_prefix = "pytriton/tritonserver/backends/python/"
    stub = f"pytriton/tritonserver/python_backend_stubs/{PY}/triton_python_backend_stub"
    python_backend = layout / BACKENDS / "python"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if stub not in names:
            raise InstallError(f"{PYTRITON_REQUIREMENT} has no python backend stub for Python {PY}")
        for name in names:
            if name.endswith("/"):
                continue
            if name.startswith(f"{LIBS}/"):
                target = layout / name
            elif name.startswith(backend_prefix) or name == stub:
                target = python_backend / Path(name).name
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    (python_backend / "triton_python_backend_stub").chmod(0o755)
    libpython = sysconfig.get_config_var("INSTSONAME")
    (layout / LIBS / libpython).symlink_to(Path(sysconfig.get_config_var("LIBDIR")) / libpython)
    print(f"downloaded {wheel.name}")
    return next((layout / LIBS).glob("libtritonserver-*.so")).name


def _build_bindings(source: Path, libs: Path, library: str, output: Path) -> None:
    """Compile the official bindings against the pytriton core under its hashed name."""
    installed_at = Path(sysconfig.get_paths()["platlib"]) / "tritonserver" / "_c"
    compile_against_core(
        source / _BINDINGS_SOURCE,
        source / "include",
        libs / library,
        output,
        installed_at,
        "the tritonserver bindings",
        runtime_libs=install_root() / LIBS,
    )


def compile_against_core(
    source_file: Path,
    include: Path,
    library: Path,
    output: Path,
    installed_at: Path,
    what: str,
    runtime_libs: Path | None = None,
) -> None:
    """Compile a pybind11 module that links the core `library` by its file name.

    Linked by name (the pytriton core's is hashed), the module binds to the core the process
    already holds, shared with the backends. Its DT_RPATH (not RUNPATH), which also serves the
    core's own dependencies such as libcurl, names `runtime_libs`, the folder the core is in at
    run time (default: where `library` is): relative to `installed_at`, where the module is
    installed, when that folder is in this environment's install root, else absolute (an
    existing core such as the NGC image's /opt/tritonserver/lib).
    """
    import pybind11

    folder = runtime_libs or library.parent
    inside = folder.resolve().is_relative_to(install_root().resolve())
    rpath = "$ORIGIN/" + os.path.relpath(folder, installed_at) if inside else str(folder)
    started = time.monotonic()
    run(
        [
            "g++", "-O2", "-shared", "-fPIC", "-std=c++17", "-fvisibility=hidden",
            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
            f"-I{include}", str(source_file), "-o", str(output),
            f"-L{library.parent}", f"-l:{library.name}", f"-Wl,--disable-new-dtags,-rpath,{rpath}",
        ],
        f"compiling {what}",
    )  # fmt: skip
    print(f"compiled {output.name} in {time.monotonic() - started:.0f} s")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


# r24.10 API leaks that keep a model referenced, so Server.stop waits exit_timeout and
# raises "Exit timeout expired": (file, original, replacement, occurrences).
_SUBMIT = "        self._server.infer_async(request)\n"
_API_PATCHES = (
    # A request Triton rejects on submit (bad shape, dtype, batch size) and its response
    # iterator keep each other alive through a C++ callback the garbage collector cannot see.
    (
        "tritonserver/_api/_model.py",
        _SUBMIT,
        "        try:\n    " + _SUBMIT + "        except Exception:\n"
        "            response_iterator._request = None\n            raise\n",
        2,
    ),
    # An error response's traceback holds the C++ response (and so the model) in a reference
    # cycle with the error until the next garbage collection.
    (
        "tritonserver/_api/_response.py",
        "            except TritonError as error:\n",
        "            except TritonError as error:\n                error.__traceback__ = None\n",
        1,
    ),
)


def _patch_api(files: dict[str, bytes]) -> None:
    """Apply `_API_PATCHES` to the package files, refusing sources they do not match."""
    for name, original, replacement, occurrences in _API_PATCHES:
        text = files[name].decode()
        if text.count(original) != occurrences:
            raise InstallError(f"{name} is not the {BRANCH} source this install patches")
        files[name] = text.replace(original, replacement).encode()


def _build_wheel(source: Path, bindings: Path, work: Path) -> Path:
    """Package `tritonserver` as a wheel so pip can list, upgrade and uninstall it."""
    tag = f"cp{PY.replace('.', '')}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    dist_info = f"tritonserver-{TRITON_VERSION}.dist-info"
    files: dict[str, bytes] = {
        f"tritonserver/{path.relative_to(source / 'python' / 'tritonserver').as_posix()}": path.read_bytes()
        for path in sorted((source / "python" / "tritonserver").rglob("*"))
        if path.is_file() and path.suffix in {".py", ".pyi", ".typed"}
    }
    _patch_api(files)
    files[f"tritonserver/_c/{bindings.name}"] = bindings.read_bytes()
    files[f"{dist_info}/METADATA"] = (
        "Metadata-Version: 2.1\nName: tritonserver\n"
        f"Version: {TRITON_VERSION}\nSummary: Triton Inference Server In-Process Python API "
        f"(core {BRANCH}, built by serve_app.triton_install)\nLicense: BSD-3-Clause\n"
        "Requires-Dist: numpy<2\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: serve_app.triton_install\nRoot-Is-Purelib: false\n"
        f"Tag: {tag}-{tag}-{platform}\n"
    ).encode()
    files[f"{dist_info}/LICENSE"] = (source / "LICENSE").read_bytes()
    record = [_record_line(name, data) for name, data in files.items()] + [f"{dist_info}/RECORD,,"]
    wheel = work / f"tritonserver-{TRITON_VERSION}-{tag}-{tag}-{platform}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def install_core(source: Path, work: Path) -> None:
    """Replace the install root with a fresh core + python backend; pip-install `tritonserver`."""
    ensure_pybind11()
    layout = work / "layout"
    library = _stage_binaries(work, layout)
    bindings = work / f"triton_bindings{sysconfig.get_config_var('EXT_SUFFIX')}"
    _build_bindings(source, layout / LIBS, library, bindings)
    wheel = _build_wheel(source, bindings, work)
    root = install_root()
    shutil.rmtree(root, ignore_errors=True)
    shutil.move(layout, root)
    print(f"installed Triton {TRITON_VERSION} core and python backend into {root}")
    pip_install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall"]
    run([*pip_install, str(wheel)], "pip install tritonserver")
    print(f"installed tritonserver {TRITON_VERSION} into {sysconfig.get_paths()['platlib']}")
