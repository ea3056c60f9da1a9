"""One GPU per replica: configs/app.gpu.yaml's 2 replicas with num_gpus: 1 on the session
cluster's 2 fake GPUs.

Ray assigns each replica its own GPU id and sets CUDA_VISIBLE_DEVICES to it; there
is no CUDA here, so the torch runtime falls back to CPU and still reports the id in
the server metadata (GET /v2 → "serve_app").
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from ray.serve.schema import ServeDeploySchema

from devtools.processes import free_port
from devtools.serve_configs import free_request_path_ports
from tests.conftest import reference
from tests.e2e.checks import infer_json, replicas_answering
from tests.e2e.conftest import FAKE_GPUS
from tests.e2e.serve_run import ROOT, ServeRun, endpoints

pytestmark = pytest.mark.e2e

CLIENTS = 4

GPU_CONFIG = ROOT / "configs" / "app.gpu.yaml"


@pytest.fixture(scope="module", params=[1, 0.5], ids=["num_gpus=1", "num_gpus=0.5"])
def served_config(request: pytest.FixtureRequest, example_repository: Path) -> dict[str, Any]:
    """configs/app.gpu.yaml (num_gpus: 1 per replica) made to fit this machine: the torch
    runtime, the example repository, loopback, 2 fixed replicas of 1 CPU and `num_gpus`."""
    config = yaml.safe_load(GPU_CONFIG.read_text())
    ServeDeploySchema.model_validate(config)  # the shipped file is a valid Serve config
    config["http_options"].update(host="127.0.0.1", port=free_port())
    free_request_path_ports(config)
    app = config["applications"][0]
    app["args"].update(model_repository=str(example_repository), runtime="torch")
    deployment = app["deployments"][0]
    assert deployment["ray_actor_options"]["num_gpus"] == 1
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = FAKE_GPUS
    deployment["ray_actor_options"].update(num_cpus=1, num_gpus=request.param)
    return config


def test_each_replica_is_pinned_to_its_gpu(served: ServeRun) -> None:
    """num_gpus: 1 → each replica its own GPU; num_gpus: 0.5 → both share one (Ray packs them)."""
    num_gpus = served.config["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"]
    # The second replica may still be starting when the first one answers /v2/health/ready.
    seen = replicas_answering(served.url, FAKE_GPUS, timeout_s=120)
    print(f"\nreplica placements with num_gpus={num_gpus}:")
    for block in seen.values():
        print(f"  {json.dumps(block)}")
    assert len(seen) == FAKE_GPUS, f"only {list(seen)} answered"
    gpu_ids = [tuple(block["gpu_ids"]) for block in seen.values()]
    assert all(len(ids) == 1 for ids in gpu_ids), gpu_ids
    if num_gpus == 1:
        assert sorted(ids[0] for ids in gpu_ids) == [str(i) for i in range(FAKE_GPUS)], "distinct GPU ids"
    else:
        assert len(set(gpu_ids)) == 1, f"two half-GPU replicas share one GPU: {gpu_ids}"
    for block in seen.values():
        # Ray pins the replica to its GPU: the only device CUDA could see is its own.
        assert block["cuda_visible_devices"] == block["gpu_ids"][0]
        # No CUDA on this machine: a clean CPU fallback that still reports the assigned GPU.
        assert block["device"] == "cpu"
        assert block["runtime"] == "torch"


def test_inference_is_correct_on_every_replica(served: ServeRun, example_repository: Path) -> None:
    """Each replica's own server answers correctly, and the deployment's statistics count every
    request, whichever replica served it."""
    rows = np.random.default_rng(1).random((1, 16), dtype=np.float32)
    (expected,) = reference(example_repository, "linear", rows)
    front, *replicas = endpoints(served, FAKE_GPUS)
    stats = httpclient.InferenceServerClient(front.http)
    before = stats.get_inference_statistics("linear")["model_stats"][0]["inference_count"]
    for replica in replicas:
        outputs = infer_json(f"http://{replica.http}", "linear", rows)
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    with ThreadPoolExecutor(CLIENTS) as clients:
        for outputs in clients.map(lambda _: infer_json(served.url, "linear", rows), range(20)):
            np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    after = stats.get_inference_statistics("linear")["model_stats"][0]["inference_count"]
    stats.close()
    assert after - before == len(replicas) + 20
