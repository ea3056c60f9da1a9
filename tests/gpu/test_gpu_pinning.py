"""One real GPU per replica: configs/app.gpu.yaml's triton runtime through `serve run` on this
machine's GPUs (up to 2 replicas with num_gpus: 1; its own Ray, which finds the GPUs itself).

tests/e2e/test_gpu_pinning.py checks the same assignment on fake GPUs without CUDA; here each
replica's Triton loads KIND_GPU models on the GPU Ray gave it, and answers as torch on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from devtools.processes import free_port
from devtools.serve_configs import free_request_path_ports
from tests.conftest import reference
from tests.e2e.checks import infer_json, replicas_answering
from tests.e2e.serve_run import ROOT, ServeRun
from tests.gpu.test_gpu import TOLERANCE, with_instance_group

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(420),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU"),
]

REPLICAS = min(torch.cuda.device_count(), 2)


@pytest.fixture(scope="module")
def repository(example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_instance_group(example_repository, tmp_path_factory.mktemp("pinned"), "KIND_GPU")


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeRun]:
    config = yaml.safe_load((ROOT / "configs" / "app.gpu.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=free_port())
    free_request_path_ports(config)
    app = config["applications"][0]
    app["args"].update(model_repository=str(repository), runtime="triton")
    deployment = app["deployments"][0]
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = REPLICAS
    deployment["ray_actor_options"].update(num_cpus=2, num_gpus=1)
    run = ServeRun(config, tmp_path_factory.mktemp("serve-gpu")).start(timeout_s=300)
    yield run
    run.stop()


def test_each_replica_serves_on_its_own_gpu(served: ServeRun, repository: Path) -> None:
    seen = replicas_answering(served.url, REPLICAS, timeout_s=120)
    print(f"\nreplica placements: {json.dumps(list(seen.values()))}")
    assert len(seen) == REPLICAS
    ids = sorted(block["gpu_ids"][0] for block in seen.values())
    assert len(set(ids)) == REPLICAS, f"each replica its own GPU: {ids}"
    for block in seen.values():
        assert len(block["gpu_ids"]) == 1 and block["cuda_visible_devices"] == block["gpu_ids"][0]
        assert block["runtime"] == "triton" and block["device"] == f"cuda:0 (GPU {block['gpu_ids'][0]})"
    rows = np.random.default_rng(2).standard_normal((1, 16), dtype=np.float32)
    (expected,) = reference(repository, "linear", rows)
    for _ in range(4 * REPLICAS):
        np.testing.assert_allclose(infer_json(served.url, "linear", rows), expected, atol=TOLERANCE)
