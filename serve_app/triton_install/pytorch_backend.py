"""Triton's own PyTorch backend (`libtriton_pytorch.so`), compiled against the torch installed here.

The r24.10 sources of three repositories (pytorch_backend, backend, common) compile unchanged
against a torch wheel's headers and libraries. The library links the pytriton core by its hashed
name, so it binds to the core the bindings loaded, and torch's libraries by $ORIGIN-relative
DT_RPATH, so it shares the libtorch that `import torch` loads in the same process. A GPU build
(`--gpu`) adds TRITON_ENABLE_GPU, the gather kernel (nvcc, for torch's GPU architectures) and
the CUDA runtime of torch's own CUDA version, all from PyPI's CUDA wheels beside torch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from serve_app.triton_install.build import InstallError, run, run_all, source_tree
from serve_app.triton_layout import LIBS, backends_root, install_root

BRANCH = "r24.10"
SOURCE_ENV = "SERVE_APP_TRITON_PYTORCH_BACKEND_SRC"
CLONES = {
    name: f"https://github.com/triton-inference-server/{name}"
    for name in ("pytorch_backend", "backend", "common")
}
RAPIDJSON_HEADER = Path("/usr/include/rapidjson/document.h")

_SOURCES = (
    *(f"pytorch_backend/src/{name}.cc" for name in ("libtorch", "libtorch_utils")),
    *(
        f"backend/src/backend_{name}.cc"
        for name in ("common", "input_collector", "memory", "model", "model_instance", "output_responder")
    ),
    *(f"common/src/{name}.cc" for name in ("error", "logging", "async_work_queue", "thread_pool")),
)
# As Triton's CMake builds it: statistics on (queue and compute times in /stats and metrics).
DEFINES = ("TRITON_ENABLE_STATS=1",)
_LDSCRIPT = Path("pytorch_backend", "src", "libtriton_pytorch.ldscript")


def backend_sources() -> AbstractContextManager[Path]:
    """A directory holding pytorch_backend/, backend/ and common/ at r24.10."""
    return source_tree(SOURCE_ENV, Path(_SOURCES[0]), CLONES, BRANCH)


def torch_build_facts() -> dict[str, object]:
    """What the backend is compiled against; a change means it must be rebuilt.

    The version is the installed distribution's (`2.13.0`), which is what a replica compares
    with (triton_layout.pytorch_backend_problem), not `torch.__version__` (`2.13.0+cu130`).
    """
    import torch

    return {
        "torch": metadata.version("torch"),
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "defines": list(DEFINES),
    }


@dataclass(frozen=True)
class CudaToolkit:
    """The CUDA pieces a GPU build compiles and links with, all of torch's CUDA major version."""

    version: str  # torch.version.cuda, e.g. "13.0"
    includes: tuple[Path, ...]
    lib: Path  # holds libcudart.so.<major>, the runtime torch loads
    nvcc: Path
    archs: tuple[str, ...]  # torch's own GPU architectures, e.g. ("75", "80", "90")

    @property
    def major(self) -> str:
        return self.version.split(".")[0]

    def gencode(self) -> list[str]:
        """Machine code for each of torch's architectures, and PTX for the newest (later GPUs)."""
        flags = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in self.archs]
        return [*flags, f"-gencode=arch=compute_{self.archs[-1]},code=compute_{self.archs[-1]}"]


def _wheels(version: str) -> tuple[str, str]:
    """What to pip install for the CUDA runtime and for nvcc of torch's CUDA `version`.

    CUDA 12 wheels carry a -cu12 suffix. From CUDA 13 torch depends on the `cuda-toolkit`
    metapackage, whose `nvcc` extra pins nvcc, its cicc (nvidia-nvvm) and its headers to one
    release: nvidia-cuda-nvcc alone takes the newest nvidia-nvvm, whose PTX its ptxas rejects.
    """
    major = version.split(".")[0]
    if major == "12":
        return f"nvidia-cuda-runtime-cu12=={version}.*", f"nvidia-cuda-nvcc-cu12=={version}.*"
    toolkit = next(
        (req.split(";")[0].split("==")[1].strip() for req in metadata.requires("torch") or ()
         if req.startswith("cuda-toolkit") and "==" in req),
        f"{version}.*",
    )  # fmt: skip
    return f"nvidia-cuda-runtime=={version}.*", f"cuda-toolkit[nvcc]=={toolkit}"


def _mismatched_compiler() -> str | None:
    """nvcc's wheel and its cicc's (nvidia-nvvm) from different releases, if they are."""
    try:
        nvcc, nvvm = metadata.version("nvidia-cuda-nvcc"), metadata.version("nvidia-nvvm")
    except metadata.PackageNotFoundError:
        return None
    if nvcc.split(".")[:2] == nvvm.split(".")[:2]:
        return None
    return f"nvidia-cuda-nvcc {nvcc} with nvidia-nvvm {nvvm} (ptxas rejects the newer cicc's PTX)"


def _nvidia_roots() -> list[Path]:
    """The `nvidia/` folders PyPI's CUDA wheels install into (a namespace package)."""
    try:
        import nvidia
    except ImportError:
        return []
    return [Path(path) for path in nvidia.__path__]


def _nvcc_release(nvcc: Path) -> str:
    result = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True)
    match = re.search(r"release (\d+\.\d+)", result.stdout)
    return match.group(1) if match else "unknown"


def cuda_toolkit() -> CudaToolkit:
    """Locate the CUDA runtime and nvcc of torch's CUDA version in PyPI's wheels.

    CUDA 12 wheels install per component (nvidia/cuda_runtime, nvidia/cuda_nvcc, ...), CUDA 13
    wheels into one tree (nvidia/cu13). An nvcc on PATH serves only if it is of torch's major
    version: the gather kernel calls the CUDA runtime that torch loads.
    """
    import torch

    if torch.version.cuda is None:
        raise InstallError("--gpu needs a CUDA build of torch (this torch is CPU-only)")
    version = str(torch.version.cuda)
    major = version.split(".")[0]
    runtime_wheel, nvcc_wheel = _wheels(version)
    folders = [root / name for root in _nvidia_roots() for name in (f"cu{major}", "cuda_runtime")]
    runtime = next(
        (
            folder
            for folder in folders
            if (folder / "include" / "cuda_runtime_api.h").is_file()
            and (folder / "lib" / f"libcudart.so.{major}").is_file()
        ),
        None,
    )
    if runtime is None:
        raise InstallError(
            f"--gpu needs the CUDA {major} runtime and headers that torch {version} uses: "
            f"pip install '{runtime_wheel}'"
        )
    # CUDA 12's headers are spread over one folder per component (torch's include cuBLAS's too).
    others = {folder for root in _nvidia_roots() for folder in root.glob("*/include")} - {runtime / "include"}
    includes = (runtime / "include", *sorted(others))
    components = (f"cu{major}", "cuda_nvcc")
    wheel_nvcc = [root / name / "bin" / "nvcc" for root in _nvidia_roots() for name in components]
    on_path = shutil.which("nvcc")
    nvcc = next((path for path in wheel_nvcc if path.is_file()), Path(on_path) if on_path else None)
    fix = f"pip install '{nvcc_wheel}'"
    if nvcc is None:
        raise InstallError(f"--gpu compiles backend/src/kernel.cu with nvcc: {fix}")
    release = _nvcc_release(nvcc)
    if release.split(".")[0] != major:
        raise InstallError(f"{nvcc} is CUDA {release}, torch uses CUDA {version}: {fix}")
    mismatch = _mismatched_compiler()
    if mismatch:
        raise InstallError(f"{mismatch}: {fix}")
    flags = torch._C._cuda_getArchFlags().split()
    archs = tuple(flag.removeprefix("sm_") for flag in flags if flag.startswith("sm_"))
    return CudaToolkit(version, includes, runtime / "lib", nvcc, archs)


def _cuda(gpu: bool) -> tuple[list[str], list[str], CudaToolkit | None]:
    """Compile flags, link flags and the toolkit of a GPU build (nothing for a CPU build)."""
    if not gpu:
        return [], [], None
    cuda = cuda_toolkit()
    flags = ["-DTRITON_ENABLE_GPU=1", *(f"-I{include}" for include in cuda.includes)]
    libs = ["-ltorch_cuda", "-lc10_cuda", f"-L{cuda.lib}", f"-l:libcudart.so.{cuda.major}"]
    return flags, libs, cuda


def build(source: Path, core_source: Path, gpu: bool, work: Path) -> Path:
    """Compile and link the backend into `<backends>/pytorch/libtriton_pytorch.so`."""
    import torch

    if not RAPIDJSON_HEADER.is_file():
        raise InstallError(
            f"RapidJSON headers are required ({RAPIDJSON_HEADER}): apt-get install rapidjson-dev"
        )
    torch_dir = Path(torch.__file__).parent
    cuda_flags, cuda_libs, cuda = _cuda(gpu)
    compile_flags = [
        "-O2", "-fPIC", "-std=c++17", "-w",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-D{define}" for define in DEFINES),
        *(f"-I{source / part / 'include'}" for part in ("backend", "common")),
        f"-I{core_source / 'include'}",
        f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        *cuda_flags,
    ]  # fmt: skip
    objects = [work / (Path(name).stem + ".o") for name in _SOURCES]
    jobs = [
        (["g++", *compile_flags, "-c", str(source / name), "-o", str(obj)], f"compiling {name}")
        for name, obj in zip(_SOURCES, objects, strict=True)
    ]
    if cuda is not None:
        kernel = work / "kernel.o"
        jobs.append(
            (
                [str(cuda.nvcc), "-O2", "-std=c++17", "-Xcompiler", "-fPIC", *cuda.gencode(),
                 *(f"-I{include}" for include in cuda.includes), "-c",
                 str(source / "backend" / "src" / "kernel.cu"), "-o", str(kernel)],
                "compiling kernel.cu",
            )
        )  # fmt: skip
        objects.append(kernel)
    started = time.monotonic()
    run_all(jobs)
    target = backends_root() / "pytorch" / "libtriton_pytorch.so"
    target.parent.mkdir(parents=True, exist_ok=True)
    core_libs = install_root() / LIBS
    rpath = ":".join(
        "$ORIGIN/" + os.path.relpath(folder, target.parent)
        for folder in (torch_dir / "lib", core_libs, *([cuda.lib] if cuda else []))
    )
    library = next(core_libs.glob("libtritonserver-*.so")).name
    built = work / target.name
    run(
        [
            "g++", "-shared", "-o", str(built), *map(str, objects),
            f"-L{torch_dir / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10", *cuda_libs,
            f"-L{core_libs}", f"-l:{library}",
            f"-Wl,--disable-new-dtags,-rpath,{rpath}", f"-Wl,--version-script={source / _LDSCRIPT}",
        ],
        "linking libtriton_pytorch.so",
    )  # fmt: skip
    # Replaced, not overwritten: a running replica may have the old library mapped.
    staged = target.with_suffix(".so.new")
    shutil.copyfile(built, staged)
    os.replace(staged, target)
    kind = f"GPU, CUDA {cuda.version}, sm_{'/'.join(cuda.archs)}" if cuda else "CPU"
    print(f"built Triton's PyTorch backend ({kind}, torch {torch.__version__}) in "
          f"{time.monotonic() - started:.0f} s: {target}")  # fmt: skip
    return target
