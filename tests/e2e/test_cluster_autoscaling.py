"""Ray cluster autoscaling: GPU replicas make the autoscaler add GPU nodes, and remove them idle.

Runs its own Ray cluster (tests/e2e/cluster.py: Ray's fake multi-node provider, a
head without GPUs, autoscaled {CPU: 1, GPU: 1} workers, min_workers 0, max_workers 2),
never the session cluster of conftest: nothing here requests `ray_address`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from devtools.processes import session_processes
from tests.conftest import reference
from tests.e2e.checks import infer_json, replicas_answering
from tests.e2e.cluster import FakeAutoscalingCluster, NodeWatcher, gpu_workers
from tests.e2e.serve_run import APP_CONFIG, ROOT, ServeRun, app_config, fixed_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPLICAS = 2


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAutoscalingCluster]:
    cluster = FakeAutoscalingCluster(tmp_path_factory.mktemp("fake-cluster"), idle_timeout_minutes=0.25)
    cluster.start()
    try:
        yield cluster
    finally:
        sid = cluster.process.pid if cluster.process else None
        killed = cluster.stop()
        print(f"\nfake cluster stopped; processes SIGKILLed after the grace period: {killed}")
        if sid is not None:
            assert session_processes(sid) == [], "processes of the fake cluster outlived stop()"


def replicas_running(sample: dict[str, Any], n: int) -> bool:
    app = sample["apps"].get("triton")
    if not app or app["status"] != "RUNNING":
        return False
    return app["replicas"].get("InferenceServer", {}).get("RUNNING", 0) == n


def first_seen(samples: list[dict[str, Any]], since: float) -> dict[str, float]:
    """GPU node id → seconds after `since` when it first appeared."""
    seen: dict[str, float] = {}
    for sample in samples:
        for node in gpu_workers(sample):
            seen.setdefault(node["id"], sample["t"] - since)
    return seen


def last_seen(samples: list[dict[str, Any]], since: float) -> dict[str, float]:
    """GPU node id → seconds after `since` of the first sample without it."""
    gone: dict[str, float] = {}
    alive: set[str] = set()
    for sample in samples:
        ids = {n["id"] for n in gpu_workers(sample)}
        for node in alive - ids:
            gone.setdefault(node, sample["t"] - since)
        alive = ids
    return gone


def test_gpu_replicas_grow_and_shrink_the_cluster(
    fake_cluster: FakeAutoscalingCluster,
    example_repository: Path,
    tmp_path: Path,
) -> None:
    watcher = NodeWatcher(fake_cluster.address, tmp_path, fake_cluster.client_env()).start()
    try:
        start = watcher.wait_for(lambda s: True, 60, "a first sample of the fake cluster")
        assert gpu_workers(start) == [], "min_workers is 0: no GPU node before any demand"

        config = app_config(
            {"model_repository": str(example_repository), "runtime": "torch"},
            fixed_replicas(REPLICAS, ray_actor_options={"num_cpus": 1, "num_gpus": 1}),
        )
        # Fake nodes share this host: one proxy (on the head) for the one HTTP port.
        config["proxy_location"] = "HeadOnly"
        # `serve run` authenticates to this cluster with its token (not ~/.ray's).
        serve = ServeRun(config, tmp_path, address=fake_cluster.address, env=dict(fake_cluster.client_env()))

        deployed = time.time()
        serve.start(timeout_s=150)
        try:
            running = watcher.wait_for(lambda s: replicas_running(s, REPLICAS), 120, "2 RUNNING replicas")
            app_running_s = (
                next(
                    s["t"] for s in watcher.samples() if s["t"] >= deployed and replicas_running(s, REPLICAS)
                )
                - deployed
            )
            added = first_seen(watcher.samples(), deployed)
            print(f"\nGPU nodes added after deploy (s): {json.dumps(added)}; "
                  f"app RUNNING with {REPLICAS} replicas after {app_running_s:.1f} s")  # fmt: skip
            assert len(gpu_workers(running)) == REPLICAS, "one {CPU: 1, GPU: 1} node per replica"
            assert len(added) == REPLICAS

            # Correct results, and both replicas (one per GPU node) answer.
            rows = np.random.default_rng(0).random((3, 16), dtype=np.float32)
            (expected,) = reference(example_repository, "linear", rows)
            np.testing.assert_allclose(infer_json(serve.url, "linear", rows), expected, rtol=1e-5, atol=1e-5)
            placements = replicas_answering(serve.url, REPLICAS)
            assert len(placements) == REPLICAS, f"requests reached only {list(placements)}"
            nodes = {p["node_id"] for p in placements.values()}
            assert nodes <= {n["id"] for n in gpu_workers(running)}, "replicas run on the GPU workers"
            assert len(nodes) == REPLICAS
            assert all(p["gpu_ids"] == ["0"] and p["device"] == "cpu" for p in placements.values())
        finally:
            stopped = time.time()
            serve.stop()

        gone_sample = watcher.wait_for(lambda s: not gpu_workers(s), 150, "idle GPU nodes removed")
        removed = last_seen(watcher.samples(), stopped)
        print(f"GPU nodes removed after the app shut down (s): {json.dumps(removed)} "
              f"(idle_timeout_minutes={fake_cluster.config['idle_timeout_minutes']}); "
              f"all gone after {gone_sample['t'] - stopped:.1f} s")  # fmt: skip
        assert set(removed) == set(added)
        assert len(gone_sample["nodes"]) == 1, "only the head is left"
    finally:
        watcher.stop()


def test_shipped_cluster_configs_match_the_tested_setup() -> None:
    """configs/cluster.yaml and the RayService have the node types proven above, and serve
    configs/app.gpu.yaml's application (configs/app.yaml's, with one GPU a replica)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    validate_config(cluster)
    validate_config(prepare_config(cluster))
    gpu_type = cluster["available_node_types"]["ray.worker.gpu"]
    assert gpu_type["min_workers"] == 0 and gpu_type["resources"]["GPU"] == 1
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"].get("GPU", 0) == 0

    gpu_app = yaml.safe_load((ROOT / "configs" / "app.gpu.yaml").read_text())
    ServeDeploySchema.model_validate(gpu_app)
    base_app = yaml.safe_load(APP_CONFIG.read_text())["applications"][0]
    (application,) = gpu_app["applications"]
    for key in ("name", "route_prefix", "import_path"):
        assert application[key] == base_app[key]
    assert application["deployments"][0]["ray_actor_options"]["num_gpus"] == 1
    max_replicas = application["deployments"][0]["autoscaling_config"]["max_replicas"]
    assert max_replicas <= cluster["max_workers"] * gpu_type["resources"]["GPU"]

    service = yaml.safe_load((ROOT / "configs" / "kuberay-rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config["applications"] == gpu_app["applications"]
    # One request path (HAProxy) wherever the app runs.
    shipped_path = yaml.safe_load(APP_CONFIG.read_text())["controller_options"]
    assert serve_config["controller_options"] == gpu_app["controller_options"] == shipped_path
    ray_cluster = service["spec"]["rayClusterConfig"]
    assert ray_cluster["enableInTreeAutoscaling"] is True
    (group,) = ray_cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= max_replicas
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    head = ray_cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert container["image"] == head["image"] == cluster["docker"]["image"]
    assert ray_cluster["rayVersion"] == ray.__version__
