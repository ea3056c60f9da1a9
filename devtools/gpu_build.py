"""The `--gpu` build, compiled and started on a machine without a GPU: `python -m devtools.gpu_build`.

A venv of its own, outside the checkout (`--venv`, `$SERVE_APP_GPU_BUILD_VENV`, default
~/.cache/serve_app/gpu_build/venv), gets PyPI's CUDA build of this environment's torch version,
the nvcc of torch's CUDA release, and this checkout (editable, with its test and bench extras).
Then `python -m serve_app.triton_install install --gpu` runs there, and these checks:

* links: the PyTorch backend needs libcudart of torch's CUDA major version, libc10_cuda.so and
  libtorch.so; every library it needs resolves (ldd), torch's and CUDA's inside the venv;
* serve: serve_app's Triton runtime on that build starts in-process, loads a TorchScript model
  with a KIND_CPU instance group and answers as torch does; a KIND_GPU one is UNAVAILABLE with
  Triton's reason where no GPU is present; requests take serve_app's extension; one core is mapped;
* extension-only: `install --extension-only --core DIR` against another environment's core
  (this one's, the caller's) builds an extension that the venv's runtime then serves through.

pip's own configuration is set aside for the CUDA packages (PIP_CONFIG_FILE=/dev/null, no
find-links, extra index or constraint): a machine whose pip prefers a local CPU wheel of the same
version would install that one instead. The checkout's other dependencies use pip's configuration.
Prints a JSON report and writes it beside the venv (report.json). tests/gpu_build drives the same
steps (`python -m pytest -m gpu_build`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_ENV = "SERVE_APP_GPU_BUILD_VENV"
# Where CI finds Triton's sources (.ci/run): used when the variables are not set.
VENDOR = ROOT.parent / "shared" / "vendor"
SOURCES = {
    "SERVE_APP_TRITON_CORE_SRC": "triton-core-r24.10.tar.gz",
    "SERVE_APP_TRITON_PYTORCH_BACKEND_SRC": "triton-pytorch-backend-r24.10.tar.gz",
}
# pip settings that could bring a CPU wheel or cap the version instead of PyPI's CUDA build.
_PIP_REDIRECTS = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")
_DOWNLOAD = re.compile(r"Downloading \S+ \(([\d.]+) (kB|MB|GB)\)")
_UNITS = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}


def default_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or Path.home() / ".cache" / "serve_app" / "gpu_build" / "venv")


def _mb(paths: list[Path]) -> float:
    """Disk use of `paths` in MB (du: counts hard links once)."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return 0.0
    out = subprocess.run(["du", "-scm", *existing], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1].split()[0])


@dataclass
class GpuVenv:
    """The compile check's venv and what was done in it (the report)."""

    path: Path
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def install_root(self) -> Path:
        return self.path / "lib" / "serve_app_triton"

    @property
    def backend(self) -> Path:
        return self.install_root / "opt" / "tritonserver" / "backends" / "pytorch" / "libtriton_pytorch.so"

    def environment(self, **changes: str) -> dict[str, str]:
        """The venv first on PATH (nvcc, python3 for the stub), this checkout importable, the
        Triton sources of CI where none are given."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VIRTUAL_ENV": str(self.path)}
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        for variable, archive in SOURCES.items():
            if not env.get(variable) and (VENDOR / archive).is_file():
                env[variable] = str(VENDOR / archive)
        return {**env, **changes}

    def run(self, *args: str, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
        """Run the venv's python; its standard output, or a RuntimeError with the output's end."""
        done = subprocess.run(
            [str(self.python), *args], capture_output=True, text=True, timeout=timeout,
            env=env or self.environment(), cwd=ROOT,
        )  # fmt: skip
        if done.returncode != 0:
            output = done.stdout + done.stderr
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{output[-4000:]}")
        return done.stdout

    def pip(self, *args: str, isolated: bool = False) -> float:
        """pip install in the venv; MB downloaded. `isolated`: pip's configuration set aside."""
        env = self.environment()
        if isolated:
            env = {k: v for k, v in env.items() if k not in _PIP_REDIRECTS} | {"PIP_CONFIG_FILE": os.devnull}
        output = self.run("-m", "pip", "install", "--progress-bar", "off", *args, env=env)
        return sum(float(size) * _UNITS[unit] for size, unit in _DOWNLOAD.findall(output))

    def torch_facts(self) -> dict[str, Any]:
        code = "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda]))"
        try:
            version, cuda = json.loads(self.run("-c", code).strip().splitlines()[-1])
        except RuntimeError:
            return {}
        return {"torch": version, "cuda": cuda}


def prepare(venv: GpuVenv) -> None:
    """Create the venv (once) and install what the check needs; record times and downloads."""
    started = time.monotonic()
    before = _mb([venv.path])
    if not venv.python.exists():
        venv.path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True)
    wanted = metadata.version("torch").split("+")[0]
    downloaded = 0.0
    facts = venv.torch_facts()
    if facts.get("cuda") is None or facts["torch"].split("+")[0] != wanted:
        downloaded += venv.pip(f"torch=={wanted}", isolated=True)
        facts = venv.torch_facts()
    if facts.get("cuda") is None:
        raise RuntimeError(f"pip installed torch {facts.get('torch')}, not a CUDA build, into {venv.path}")
    downloaded += venv.pip("-e", f"{ROOT}[test,bench]")  # before anything imports serve_app
    code = (
        "import torch; from serve_app.triton_install.pytorch_backend import _wheels; "
        "print(_wheels(torch.version.cuda)[1])"
    )
    nvcc = venv.run("-c", code).strip().splitlines()[-1]
    downloaded += venv.pip(nvcc, isolated=True)
    venv.report["prepare"] = {
        **facts,
        "nvcc_requirement": nvcc,
        "downloaded_mb": round(downloaded),
        "venv_mb": round(_mb([venv.path])),
        "venv_mb_added": round(_mb([venv.path]) - before),
        "seconds": round(time.monotonic() - started),
    }


def install_gpu(venv: GpuVenv, force: bool = True) -> str:
    """`python -m serve_app.triton_install install --gpu [--force]` in the venv; its output.

    Forced by default: the venv outlives a run, and the check is that the build compiles.
    """
    started = time.monotonic()
    output = venv.run("-m", "serve_app.triton_install", "install", "--gpu", *(["--force"] if force else []))
    installed = json.loads((venv.install_root / "installed.json").read_text())
    venv.report[f"install{'' if force else '_again'}"] = {
        "seconds": round(time.monotonic() - started),
        "installed": installed,
        "output": output.strip().splitlines(),
    }
    return output


def _elf(path: Path) -> tuple[list[str], list[str]]:
    """DT_NEEDED entries and DT_RPATH folders of a shared library (readelf)."""
    dynamic = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)
    rpath = re.findall(r"\(RPATH\)\s+Library rpath: \[(.+?)\]", dynamic)
    return needed, rpath[0].split(":") if rpath else []


def _resolved(path: Path) -> dict[str, str]:
    """Every library the dynamic loader would load for `path` (ldd): name -> file or 'not found'."""
    listing = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"^\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", listing, re.MULTILINE))
    return {
        name: target if target == "not found" else os.path.realpath(target) for name, target in found.items()
    }


def check_links(venv: GpuVenv) -> dict[str, Any]:
    """What the GPU backend links and where each library resolves; raises on what is wrong."""
    cuda = str(venv.report.get("prepare", {}).get("cuda") or venv.torch_facts()["cuda"])
    cudart = f"libcudart.so.{cuda.split('.')[0]}"
    needed, rpath = _elf(venv.backend)
    resolved = _resolved(venv.backend)
    problems = [f"{name} not found" for name, target in resolved.items() if target == "not found"]
    problems += [f"{name} is not a DT_NEEDED entry" for name in (cudart, "libc10_cuda.so", "libtorch.so")
                 if name not in needed]  # fmt: skip
    venv_root = os.path.realpath(venv.path)
    for name in (cudart, "libc10_cuda.so", "libtorch.so", "libtorch_cuda.so"):
        if not resolved.get(name, "").startswith(venv_root):
            problems.append(f"{name} resolves to {resolved.get(name)}, not into {venv.path}")
    problems += [f"RPATH entry {entry} is not $ORIGIN-relative" for entry in rpath
                 if not entry.startswith("$ORIGIN/")]  # fmt: skip
    facts = {
        "needed": needed,
        "rpath": rpath,
        "cuda_libraries": {
            k: v for k, v in resolved.items() if re.match(r"lib(cuda|cublas|c10_cuda|torch_cuda)", k)
        },
    }
    venv.report["links"] = {**facts, "problems": problems}
    if problems:
        raise AssertionError("; ".join(problems))
    return facts


def serving_problems(facts: dict[str, Any]) -> list[str]:
    """What `serve` saw that is wrong: KIND_GPU must serve exactly where a GPU is present."""
    states = facts["states"]
    gpu_state = "READY" if facts["gpus"] else "UNAVAILABLE"
    problems = [] if states["on_cpu"]["state"] == "READY" else [f"on_cpu is {states['on_cpu']}"]
    if states["on_gpu"]["state"] != gpu_state or (
        gpu_state == "UNAVAILABLE" and not states["on_gpu"]["reason"]
    ):
        problems.append(f"on_gpu is {states['on_gpu']} with {facts['gpus']} GPU(s)")
    if facts["max_difference"] > 1e-5:
        problems.append(f"Triton's output differs from torch's by {facts['max_difference']}")
    if facts["caller"] != "ExtensionCaller":
        problems.append(f"requests took {facts['caller']}, not serve_app's extension")
    if len(facts["cores_mapped"]) != 1:
        problems.append(f"cores mapped: {facts['cores_mapped']}")
    return problems


def check_serving(venv: GpuVenv) -> dict[str, Any]:
    """`serve` (below) inside the venv: serve_app's Triton runtime on the GPU build."""
    output = venv.run("-m", "devtools.gpu_build", "serve", timeout=300)
    facts = json.loads(output.strip().splitlines()[-1])
    problems = serving_problems(facts)
    venv.report.setdefault("serve", []).append({**facts, "problems": problems})
    if problems:
        raise AssertionError("; ".join(problems))
    return facts


def check_extension_only(venv: GpuVenv, core: Path) -> dict[str, Any]:
    """`install --extension-only --core <core>` in the venv, then `serve` on that extension."""
    started = time.monotonic()
    venv.run("-m", "serve_app.triton_install", "install", "--extension-only", "--core", str(core))
    seconds = round(time.monotonic() - started)
    extension = next((venv.install_root / "python").glob("serve_app_triton_requests*.so"))
    needed, rpath = _elf(extension)
    facts = {
        "core": str(core),
        "seconds": seconds,
        "needed": needed,
        "rpath": rpath,
        "serve": check_serving(venv),
    }
    venv.report["extension_only"] = facts
    return facts


def run_all(venv: GpuVenv, core: Path | None) -> dict[str, Any]:
    """Every step, in order; the venv's own extension rebuilt at the end (install --gpu again)."""
    prepare(venv)
    install_gpu(venv)
    check_links(venv)
    check_serving(venv)
    if core is not None:
        try:
            check_extension_only(venv, core)
        finally:
            install_gpu(venv, force=False)
    return venv.report


# --- inside the venv ----------------------------------------------------------------------------

_CONFIG = """platform: "pytorch_libtorch"
max_batch_size: 8
input [ {{ name: "input__0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "output__0" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: {kind} count: 1 }} ]
dynamic_batching {{ }}
"""


async def _serve(repository: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from serve_app.config import AppArgs
    from serve_app.placement import Placement
    from serve_app.runtimes.triton import TritonRuntime

    module = torch.nn.Linear(16, 4).eval()
    for name, kind in (("on_cpu", "KIND_CPU"), ("on_gpu", "KIND_GPU")):
        (repository / name / "1").mkdir(parents=True)
        torch.jit.trace(module, torch.zeros(1, 16)).save(str(repository / name / "1" / "model.pt"))
        (repository / name / "config.pbtxt").write_text(_CONFIG.format(kind=kind))
    args = AppArgs.model_validate({"model_repository": repository, "runtime": "triton", "torch_threads": 1})
    runtime = TritonRuntime(args, Placement((), None, 1.0, "gpu_build", ""))
    await runtime.start()
    try:
        batch = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)
        outputs = await runtime.infer("on_cpu", "1", {"input__0": batch}, ["output__0"])
        with torch.inference_mode():
            expected = module(torch.from_numpy(batch)).numpy()
        states = {state.name: state.as_dict() for state in runtime.index()}
        maps = Path("/proc/self/maps").read_text()
        return {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpus": torch.cuda.device_count(),
            "caller": type(runtime._caller()).__name__,
            "max_difference": float(np.abs(outputs["output__0"] - expected).max()),
            "states": states,
            "cores_mapped": sorted(set(re.findall(r"\S*libtritonserver\S*\.so", maps))),
        }
    finally:
        await runtime.stop()


def serve() -> dict[str, Any]:
    """In the venv: the models on_cpu (KIND_CPU) and on_gpu (KIND_GPU) through TritonRuntime."""
    with tempfile.TemporaryDirectory(prefix="gpu-build-serve-") as scratch:
        return asyncio.run(_serve(Path(scratch)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.gpu_build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "step", nargs="?", choices=["all", "serve"], default="all", help="serve: inside the venv"
    )
    parser.add_argument(
        "--venv", type=Path, default=None, help=f"the venv (default: ${VENV_ENV} or ~/.cache/...)"
    )
    parser.add_argument(
        "--core",
        type=Path,
        default=None,
        help="an existing core for the extension-only check (default: this environment's install, if any)",
    )
    args = parser.parse_args(argv)
    if args.step == "serve":
        print(json.dumps(serve()))
        return 0
    from serve_app import triton_layout

    core = args.core or (triton_layout.install_root() if triton_layout.installed() else None)
    venv = GpuVenv(args.venv or default_venv())
    try:
        run_all(venv, core)
    finally:
        report = json.dumps(venv.report, indent=1)
        (venv.path.parent / "report.json").write_text(report + "\n")
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
