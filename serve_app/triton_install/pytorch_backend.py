"""Triton's own PyTorch backend (`libtriton_pytorch.so`), compiled against the torch installed here.

The r24.10 sources of three repositories (pytorch_backend, backend, common) compile unchanged
against a torch wheel's headers and libraries. The library links the pytriton core by its hashed
name, so it binds to the core the bindings loaded, and torch's libraries by $ORIGIN-relative
DT_RPATH, so it shares the libtorch that `import torch` loads in the same process.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import AbstractContextManager
from pathlib import Path

from serve_app.triton_install.build import InstallError, require_tool, run, run_all, source_tree
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
    """What the backend is compiled against; a change means it must be rebuilt."""
    import torch

    return {
        "torch": torch.__version__,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "defines": list(DEFINES),
    }


def _cuda(gpu: bool) -> tuple[list[str], list[str], Path | None]:
    """Compile flags, link flags and the CUDA runtime's library folder for a GPU build."""
    if not gpu:
        return [], [], None
    import torch

    if torch.version.cuda is None:
        raise InstallError("--gpu needs a CUDA build of torch (this torch is CPU-only)")
    try:
        import nvidia.cuda_runtime as cuda_runtime
    except ImportError:
        raise InstallError(
            "--gpu needs the CUDA runtime headers: pip install nvidia-cuda-runtime-cu12"
        ) from None
    cuda = Path(next(iter(cuda_runtime.__path__)))
    flags = ["-DTRITON_ENABLE_GPU=1", f"-I{cuda / 'include'}"]
    libs = ["-ltorch_cuda", "-lc10_cuda", f"-L{cuda / 'lib'}", "-l:libcudart.so.12"]
    return flags, libs, cuda / "lib"


def build(source: Path, core_source: Path, gpu: bool, work: Path) -> Path:
    """Compile and link the backend into `<backends>/pytorch/libtriton_pytorch.so`."""
    import torch

    if not RAPIDJSON_HEADER.is_file():
        raise InstallError(
            f"RapidJSON headers are required ({RAPIDJSON_HEADER}): apt-get install rapidjson-dev"
        )
    torch_dir = Path(torch.__file__).parent
    cuda_flags, cuda_libs, cuda_lib_dir = _cuda(gpu)
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
    if gpu:
        require_tool(
            "nvcc", "a GPU build compiles backend/src/kernel.cu (CUDA toolkit or nvidia-cuda-nvcc-cu12)"
        )
        kernel = work / "kernel.o"
        jobs.append(
            (
                ["nvcc", "-O2", "-std=c++17", "-Xcompiler", "-fPIC", "-c",
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
        for folder in (torch_dir / "lib", core_libs, *([cuda_lib_dir] if cuda_lib_dir else []))
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
    kind = "GPU" if gpu else "CPU"
    print(f"built Triton's PyTorch backend ({kind}, torch {torch.__version__}) in "
          f"{time.monotonic() - started:.0f} s: {target}")  # fmt: skip
    return target
