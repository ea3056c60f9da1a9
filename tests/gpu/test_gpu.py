"""On a CUDA GPU: KIND_GPU instance groups, CPU vs GPU output parity, NVML metrics, one GPU per replica.

Opt-in (`python -m pytest -m gpu`; benchmarks/gpu_check.sh runs them after `install --gpu`), and
skipped where torch sees no GPU. Parity: the same TorchScript file on the GPU and on the CPU within
1e-4 (cuBLAS and cuDNN sum in another order than the CPU kernels; TF32 stays off, torch's default
for matrix products).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.config import AppArgs
from serve_app.metrics import ReplicaMetrics
from serve_app.placement import Placement
from serve_app.runtimes.torch.runtime import TorchRuntime
from serve_app.runtimes.triton.runtime import TritonRuntime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.anyio,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU"),
]

TOLERANCE = 1e-4
RNG = np.random.default_rng(21)
# Batched example models and a batch of inputs for each (tests/conftest.py's example repository).
INPUTS: dict[str, dict[str, np.ndarray]] = {
    "image_classifier": {"input__0": RNG.random((4, 3, 224, 224), dtype=np.float32)},
    "linear": {"input__0": RNG.standard_normal((8, 16), dtype=np.float32)},
    "multi_io": {
        "x": RNG.standard_normal((4, 9), dtype=np.float32),
        "scale": RNG.random((4, 1), dtype=np.float32),
    },
}
OUTPUTS = {"image_classifier": ["output__0"], "linear": ["output__0"], "multi_io": ["output__0", "output__1"]}
GPU_PLACEMENT = Placement(gpu_ids=("0",), cuda_visible_devices="0", num_cpus=2.0, replica="gpu", node_id="")


def with_instance_group(source: Path, target: Path, kind: str) -> Path:
    """A copy of the batched examples whose configs add `instance_group [{kind: <kind>}]`."""
    for name in INPUTS:
        shutil.copytree(source / name, target / name)
        config = target / name / "config.pbtxt"
        config.write_text(config.read_text() + f"\ninstance_group [ {{ kind: {kind} count: 1 }} ]\n")
    return target


@pytest.fixture(scope="module")
async def triton_gpu(
    example_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TritonRuntime]:
    repository = with_instance_group(example_repository, tmp_path_factory.mktemp("kind_gpu"), "KIND_GPU")
    args = AppArgs.model_validate({"model_repository": repository, "runtime": "triton", "torch_threads": 2})
    runtime = TritonRuntime(args, GPU_PLACEMENT)
    await runtime.start()
    yield runtime
    await runtime.stop()


async def cpu_reference(repository: Path) -> dict[str, dict[str, np.ndarray]]:
    runtime = TorchRuntime(repository, torch.device("cpu"), 2)
    await runtime.start()
    try:
        return {name: await runtime.infer(name, "1", INPUTS[name], OUTPUTS[name]) for name in INPUTS}
    finally:
        await runtime.stop()


def assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, value in expected.items():
        difference = float(np.abs(actual[name] - value).max())
        assert difference <= TOLERANCE, f"{name} differs by {difference}"


async def test_kind_gpu_models_load_on_the_gpu(triton_gpu: TritonRuntime) -> None:
    states = {state.name: state for state in triton_gpu.index()}
    assert all(states[name].state == "READY" for name in INPUTS), states
    assert triton_gpu.device() == "cuda:0 (GPU 0)"
    config = triton_gpu.config("linear", None)
    assert [group["kind"] for group in config["instance_group"]] == ["KIND_GPU"]


async def test_triton_on_the_gpu_matches_torch_on_the_cpu(
    triton_gpu: TritonRuntime, example_repository: Path
) -> None:
    expected = await cpu_reference(example_repository)
    for name in INPUTS:
        assert_close(await triton_gpu.infer(name, "1", INPUTS[name], OUTPUTS[name]), expected[name])


async def test_the_torch_runtime_on_the_gpu_matches_the_cpu(example_repository: Path) -> None:
    expected = await cpu_reference(example_repository)
    runtime = TorchRuntime(example_repository, torch.device("cuda:0"), 2)
    await runtime.start()
    try:
        for name in INPUTS:
            assert_close(await runtime.infer(name, "1", INPUTS[name], OUTPUTS[name]), expected[name])
        assert runtime.device().startswith("cuda")
    finally:
        await runtime.stop()


async def test_nvml_reports_the_replicas_gpu(triton_gpu: TritonRuntime) -> None:
    await triton_gpu.infer("image_classifier", "1", INPUTS["image_classifier"], OUTPUTS["image_classifier"])
    samples = ReplicaMetrics(triton_gpu, interval_s=1.0, gpu_ids=GPU_PLACEMENT.gpu_ids).collect()
    gpu = {sample.name: sample for sample in samples if sample.name.startswith("nv_gpu_")}
    assert set(gpu) == {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
    total = torch.cuda.get_device_properties(0).total_memory
    assert abs(gpu["nv_gpu_memory_total_bytes"].value - total) <= 0.05 * total  # NVML's and CUDA's count
    assert 0 < gpu["nv_gpu_memory_used_bytes"].value <= gpu["nv_gpu_memory_total_bytes"].value
    assert 0.0 <= gpu["nv_gpu_utilization"].value <= 1.0
    assert gpu["nv_gpu_memory_total_bytes"].tags["gpu_uuid"].startswith("GPU-")
