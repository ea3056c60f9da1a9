"""The `--gpu` build compiled and started without a GPU (devtools.gpu_build): `python -m pytest -m gpu_build`.

Opt-in (tests/conftest.py deselects it otherwise): the first run downloads PyPI's CUDA torch and
nvcc, ~3 GB, into a venv outside the checkout (devtools.gpu_build.default_venv) that later runs
reuse; each run rebuilds the GPU install there (`install --gpu --force`, minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from devtools import gpu_build
from serve_app import triton_layout

pytestmark = [pytest.mark.gpu_build, pytest.mark.timeout(3600)]

SCRIPT = gpu_build.ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def venv() -> gpu_build.GpuVenv:
    """The compile check's venv with the --gpu install freshly built in it."""
    prepared = gpu_build.GpuVenv(gpu_build.default_venv())
    gpu_build.prepare(prepared)
    gpu_build.install_gpu(prepared)
    return prepared


def test_the_venv_has_a_cuda_torch_of_this_environments_version(venv: gpu_build.GpuVenv) -> None:
    import torch

    facts = venv.report["prepare"]
    assert facts["cuda"] is not None
    assert facts["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert venv.report["install"]["installed"]["gpu"] is True


def test_the_backend_links_torchs_cuda_runtime_by_rpath(venv: gpu_build.GpuVenv) -> None:
    facts = gpu_build.check_links(venv)  # raises, naming what is wrong
    major = venv.report["prepare"]["cuda"].split(".")[0]
    assert f"libcudart.so.{major}" in facts["needed"]
    assert all(entry.startswith("$ORIGIN/") for entry in facts["rpath"])


def test_the_gpu_build_serves_kind_cpu_without_a_gpu(venv: gpu_build.GpuVenv) -> None:
    facts = gpu_build.check_serving(venv)
    assert facts["states"]["on_cpu"]["state"] == "READY" and facts["caller"] == "ExtensionCaller"
    if facts["gpus"] == 0:
        assert "KIND_GPU" in facts["states"]["on_gpu"]["reason"]


@pytest.mark.skipif(
    not triton_layout.installed(), reason="no Triton install in this environment to build against"
)
def test_the_extension_builds_against_an_existing_core(venv: gpu_build.GpuVenv) -> None:
    """This environment's core stands for the NGC image's /opt/tritonserver."""
    core = triton_layout.install_root()
    try:
        facts = gpu_build.check_extension_only(venv, core)
    finally:
        gpu_build.install_gpu(venv, force=False)  # the venv's own extension again
    assert facts["rpath"] == [str(core / triton_layout.LIBS)]
    assert facts["serve"]["caller"] == "ExtensionCaller"
    assert json.loads((venv.install_root / triton_layout.STAMP).read_text())["gpu"] is True


def test_the_gpu_script_dry_run_does_what_needs_no_gpu(venv: gpu_build.GpuVenv, tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh --dry-run in the venv: the install, the GPU tests' collection and
    the benchmark's GPU repository; it says what it left for a GPU."""
    env = venv.environment(GPU_CHECK_OUT=str(tmp_path))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, cwd=gpu_build.ROOT,
        timeout=1800,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert summary["dry_run"] is True and summary["card"] is None
    assert [step["name"] for step in summary["steps"]] == ["install", "gpu tests", "benchmark"]
    assert all(step["rc"] == 0 for step in summary["steps"]), summary
    assert (tmp_path / "gpu-check.log").is_file() and os.path.getsize(tmp_path / "gpu-check.log") > 0
