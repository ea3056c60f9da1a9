"""CPU build of Triton's official in-process Python API (``import tritonserver``).

NVIDIA ships the ``tritonserver`` package only inside its containers. The PyPI wheel
``nvidia-pytriton`` carries the matching core (libtritonserver 2.51.0) and the python
backend, so ``install`` takes those binaries, compiles the r24.10 pybind11 bindings
against them and installs ``tritonserver`` into the active environment. TorchScript
models are served through the python backend with the shim in
``serve_app/runtimes/triton_shim/model.py`` (see ``torchscript_load_parameters``).

Usage::

    python -m serve_app.triton_cpu install [--force]   # idempotent, ~1 min
    python -m serve_app.triton_cpu check               # start a server, run a TorchScript model
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tritonserver

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
TRITON_VERSION = "2.51.0"
CORE_GIT_URL = "https://github.com/triton-inference-server/core"
CORE_BRANCH = "r24.10"
CORE_SOURCE_ENV = "SERVE_APP_TRITON_CORE_SRC"

# The shim (serve_app/runtimes/triton_shim/model.py) and the parameters it reads from its config.
SHIM_FILE = Path(__file__).parent / "runtimes" / "triton_shim" / "model.py"
TORCHSCRIPT_DIR_PARAMETER = "torchscript_model_dir"
TORCHSCRIPT_FILENAME_PARAMETER = "torchscript_filename"
TORCH_THREADS_PARAMETER = "torch_threads"

_PY = f"{sys.version_info.major}.{sys.version_info.minor}"
_LIBS = "nvidia_pytriton.libs"
# The wheel's binaries carry RPATH $ORIGIN/../../../../nvidia_pytriton.libs, so the
# backends must sit four levels below the directory holding the libraries.
_BACKENDS = Path("opt", "tritonserver", "backends")
_BINDINGS_SOURCE = Path("python", "tritonserver", "_c", "tritonserver_pybind.cc")


class InstallError(RuntimeError):
    """An install step failed; the message says what to do about it."""


def install_root() -> Path:
    """Directory holding the Triton libraries and backends of this environment."""
    return Path(sys.prefix) / "lib" / "serve_app_triton"


def backend_directory() -> str | None:
    """Triton backend directory to pass as ``Options.backend_directory``; None if not installed."""
    python_backend = install_root() / _BACKENDS / "python"
    ready = all(
        (python_backend / name).is_file() for name in ("libtriton_python.so", "triton_python_backend_stub")
    )
    return str(python_backend.parent) if ready else None


def environment_for_stub() -> dict[str, str]:
    """Environment updates to apply before starting a server.

    The python backend stub runs Python isolated (PYTHONPATH is ignored) and takes its
    site-packages from the first ``python3`` on PATH, so this interpreter's bin must come first.
    """
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] == bin_dir:
        return {}
    return {"PATH": os.pathsep.join([bin_dir, path]) if path else bin_dir}


def cpu_options(model_repository: str | list[str], **overrides: Any) -> tritonserver.Options:
    """Server options for a CPU host: explicit model control and no pinned/GPU resources."""
    import tritonserver

    directory = backend_directory()
    if directory is None:
        raise InstallError("Triton is not installed here: run python -m serve_app.triton_cpu install")
    settings: dict[str, Any] = {
        "model_repository": model_repository,
        "model_control_mode": tritonserver.ModelControlMode.EXPLICIT,
        "strict_model_config": True,
        "pinned_memory_pool_size": 0,
        "gpu_metrics": False,
        "backend_directory": directory,
    }
    return tritonserver.Options(**(settings | overrides))


def torchscript_load_parameters(
    model_dir: Path, config: dict[str, Any], torch_threads: int | None = None
) -> dict[str, str | bytes]:
    """``Server.load`` parameters that serve a TorchScript model through the python backend.

    ``config`` is the model's config.pbtxt as a dict (proto field names). File overrides
    make Triton load the model from a temporary directory holding only the shim, which is
    why the shim gets the real directory as a parameter: the repository is never modified.
    """
    model_dir = model_dir.resolve()
    filename = config.get("default_model_filename") or "model.pt"
    injected = {
        TORCHSCRIPT_DIR_PARAMETER: str(model_dir),
        TORCHSCRIPT_FILENAME_PARAMETER: filename,
        **({TORCH_THREADS_PARAMETER: str(torch_threads)} if torch_threads else {}),
    }
    override = {key: value for key, value in config.items() if key != "platform"} | {
        "backend": "python",
        "default_model_filename": "model.py",
        "parameters": config.get("parameters", {})
        | {key: {"string_value": value} for key, value in injected.items()},
    }
    versions = sorted(
        entry.name for entry in model_dir.iterdir() if entry.name.isdigit() and (entry / filename).is_file()
    )
    if not versions:
        raise FileNotFoundError(f"no <version>/{filename} under {model_dir}")
    shim = SHIM_FILE.read_bytes()
    return {"config": json.dumps(override)} | {f"file:{version}/model.py": shim for version in versions}


def _run(command: list[str], what: str) -> None:
    """Run a build command, turning its failure into an InstallError with its output."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise InstallError(f"{what} failed ({' '.join(command)}):\n{output}")


def _check_prerequisites() -> None:
    """Fail early, before downloading anything, on hosts the build cannot work on."""
    if shutil.which("g++") is None:
        raise InstallError("g++ is required to build the tritonserver bindings (apt-get install g++)")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise InstallError(
            f"this Python has no shared libpython{_PY}; the python backend stub embeds it, "
            "so use a Python built with --enable-shared"
        )
    if int(metadata.version("numpy").split(".")[0]) >= 2:
        raise InstallError("numpy>=2 breaks the r24.10 python backend stub: pip install 'numpy<2'")


def _ensure_pybind11() -> None:
    """pybind11 is a build-only dependency: install it when missing."""
    try:
        metadata.version("pybind11")
    except metadata.PackageNotFoundError:
        print("installing pybind11 (build dependency)")
        _run([sys.executable, "-m", "pip", "install", "pybind11"], "pip install pybind11")
        importlib.invalidate_caches()


def _stage_binaries(work: Path, layout: Path) -> str:
    """Lay out nvidia-pytriton's core libraries and python backend; return the core's file name."""
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(work), PYTRITON_REQUIREMENT],
        f"pip download {PYTRITON_REQUIREMENT}",
    )
    wheel = next(work.glob("nvidia_pytriton-*.whl"))
    backend_prefix = "pytriton/tritonserver/backends/python/"
    stub = f"pytriton/tritonserver/python_backend_stubs/{_PY}/triton_python_backend_stub"
    python_backend = layout / _BACKENDS / "python"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if stub not in names:
            raise InstallError(f"{PYTRITON_REQUIREMENT} has no python backend stub for Python {_PY}")
        for name in names:
            if name.endswith("/"):
                continue
            if name.startswith(f"{_LIBS}/"):
                target = layout / name
            elif name.startswith(backend_prefix) or name == stub:
                target = python_backend / Path(name).name
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    (python_backend / "triton_python_backend_stub").chmod(0o755)
    libpython = sysconfig.get_config_var("INSTSONAME")
    (layout / _LIBS / libpython).symlink_to(Path(sysconfig.get_config_var("LIBDIR")) / libpython)
    print(f"downloaded {wheel.name}")
    return next((layout / _LIBS).glob("libtritonserver-*.so")).name


@contextmanager
def _core_source() -> Iterator[Path]:
    """Yield a Triton core r24.10 checkout: $SERVE_APP_TRITON_CORE_SRC (dir or archive) or git."""
    given = os.environ.get(CORE_SOURCE_ENV)
    with tempfile.TemporaryDirectory(prefix="triton-core-") as scratch:
        base = Path(scratch)
        if given and Path(given).is_dir():
            base = Path(given)
        elif given:
            try:
                shutil.unpack_archive(given, scratch)
            except (OSError, ValueError, shutil.ReadError) as error:
                raise InstallError(
                    f"{CORE_SOURCE_ENV}={given} is not a directory or archive: {error}"
                ) from error
        elif shutil.which("git") is None:
            raise InstallError(f"git is required to fetch the Triton core (or set {CORE_SOURCE_ENV})")
        else:
            _run(
                ["git", "clone", "--depth", "1", "-b", CORE_BRANCH, CORE_GIT_URL, str(base / "core")],
                f"git clone {CORE_GIT_URL}",
            )
        candidates = [base, *(entry for entry in base.iterdir() if entry.is_dir())]
        source = next((c for c in candidates if (c / _BINDINGS_SOURCE).is_file()), None)
        if source is None:
            raise InstallError(f"no {_BINDINGS_SOURCE} in {given or CORE_GIT_URL}")
        print(f"using Triton core sources from {given or CORE_GIT_URL + '@' + CORE_BRANCH}")
        yield source


def _build_bindings(source: Path, libs: Path, core_library: str, output: Path) -> None:
    """Compile the official bindings against the pytriton core under its hashed name.

    The hashed name keeps one core in the process, shared with the python backend; an
    $ORIGIN-relative DT_RPATH (not RUNPATH) also serves the core's own transitive
    dependencies such as libcurl's.
    """
    import pybind11

    installed_at = Path(sysconfig.get_paths()["platlib"]) / "tritonserver" / "_c"
    rpath = "$ORIGIN/" + os.path.relpath(install_root() / _LIBS, installed_at)
    started = time.monotonic()
    _run(
        [
            "g++", "-O2", "-shared", "-fPIC", "-std=c++17", "-fvisibility=hidden",
            f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
            f"-I{source / 'include'}", str(source / _BINDINGS_SOURCE), "-o", str(output),
            f"-L{libs}", f"-l:{core_library}", f"-Wl,--disable-new-dtags,-rpath,{rpath}",
        ],
        "compiling the tritonserver bindings",
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
    """Apply ``_API_PATCHES`` to the package files, refusing sources they do not match."""
    for name, original, replacement, occurrences in _API_PATCHES:
        text = files[name].decode()
        if text.count(original) != occurrences:
            raise InstallError(f"{name} is not the {CORE_BRANCH} source this install patches")
        files[name] = text.replace(original, replacement).encode()


def _build_wheel(source: Path, bindings: Path, work: Path) -> Path:
    """Package ``tritonserver`` as a wheel so pip can list, upgrade and uninstall it."""
    tag = f"cp{_PY.replace('.', '')}"
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
        f"(core {CORE_BRANCH}, built by serve_app.triton_cpu)\nLicense: BSD-3-Clause\n"
        "Requires-Dist: numpy<2\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: serve_app.triton_cpu\nRoot-Is-Purelib: false\n"
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


def install(force: bool = False) -> None:
    """Install Triton's CPU core, python backend and the ``tritonserver`` package here."""
    root = install_root()
    stamp = root / "installed.json"
    wanted = {"pytriton": PYTRITON_REQUIREMENT, "core": CORE_BRANCH, "python": _PY}
    try:
        current = json.loads(stamp.read_text()) == wanted
        current = current and metadata.version("tritonserver") == TRITON_VERSION
    except (OSError, ValueError, metadata.PackageNotFoundError):
        current = False
    if current and not force and backend_directory() is not None:
        print(f"Triton {TRITON_VERSION} is already installed in {root} (use --force to rebuild)")
        return
    _check_prerequisites()
    _ensure_pybind11()
    with tempfile.TemporaryDirectory(prefix="serve-app-triton-") as scratch:
        work = Path(scratch)
        core_library = _stage_binaries(work, work / "layout")
        with _core_source() as source:
            bindings = work / f"triton_bindings{sysconfig.get_config_var('EXT_SUFFIX')}"
            _build_bindings(source, work / "layout" / _LIBS, core_library, bindings)
            wheel = _build_wheel(source, bindings, work)
        shutil.rmtree(root, ignore_errors=True)
        shutil.move(work / "layout", root)
        print(f"installed Triton {TRITON_VERSION} core and python backend into {root}")
        pip_install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall"]
        _run([*pip_install, str(wheel)], "pip install tritonserver")
    stamp.write_text(json.dumps(wanted))
    print(f"installed tritonserver {TRITON_VERSION} into {sysconfig.get_paths()['platlib']}")


def _tiny_torchscript_model(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Save a traced Linear(16, 4) as version 1; return it and its batching model config."""
    import torch

    module = torch.nn.Linear(16, 4).eval()
    (model_dir / "1").mkdir(parents=True)
    torch.jit.trace(module, torch.zeros(1, 16)).save(str(model_dir / "1" / "model.pt"))
    config = {
        "name": model_dir.name,
        "max_batch_size": 8,
        "input": [{"name": "input__0", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "output__0", "data_type": "TYPE_FP32", "dims": [4]}],
        "dynamic_batching": {},
    }
    return module, config


def check() -> None:
    """Start an in-process server, serve a TorchScript model through the shim, print versions."""
    import numpy as np
    import torch

    try:
        import tritonserver
    except ImportError as error:
        raise InstallError(f"{error}: run python -m serve_app.triton_cpu install") from error
    os.environ.update(environment_for_stub())
    with tempfile.TemporaryDirectory(prefix="serve-app-triton-check-") as scratch:
        module, config = _tiny_torchscript_model(Path(scratch, "linear"))
        server = tritonserver.Server(cpu_options(scratch)).start(wait_until_ready=True)
        try:
            server.load("linear", torchscript_load_parameters(Path(scratch, "linear"), config))
            batch = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)
            (response,) = server.model("linear").infer(inputs={"input__0": batch})
            output = np.from_dlpack(response.outputs["output__0"])
            expected = module(torch.from_numpy(batch)).detach().numpy()
            server_version = server.metadata()["version"]
        except tritonserver.TritonError as error:
            raise InstallError(f"Triton check failed: {error}") from error
        finally:
            server.stop()
    if not np.allclose(output, expected, atol=1e-5):
        raise InstallError("TorchScript output through Triton differs from torch")
    print(f"tritonserver {tritonserver.__version__}, server {server_version}, backends {backend_directory()}")
    print(f"python {_PY}, numpy {np.__version__}, torch {torch.__version__}: TorchScript shim OK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.triton_cpu", description="Triton's in-process Python API on CPU."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install_command = commands.add_parser("install", help="build and install tritonserver for CPU")
    install_command.add_argument("--force", action="store_true", help="rebuild even if installed")
    commands.add_parser("check", help="start a server and run a TorchScript model")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(args.force)
        else:
            check()
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
