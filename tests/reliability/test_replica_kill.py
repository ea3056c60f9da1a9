"""A replica SIGKILLed under load costs at most the requests it had in flight.

configs/app.yaml's request path (HAProxy, direct ingress) with 2 fixed replicas and 16
closed-loop clients; one replica's worker process (the `ray::ServeReplica` process below
this test's Ray cluster) gets SIGKILL. How many requests were on that replica comes from
HAProxy itself (`show stat` on its admin socket: current sessions of the server at the
replica's direct-ingress port, the most of a few reads just before the kill). Serve must
bring the deployment back to 2 replicas, the new one must serve, and every request after
that must succeed. Counts and times are printed (`pytest -s`).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray

from devtools.processes import tcp_listeners
from tests.conftest import reference
from tests.e2e.checks import json_request, replicas_answering
from tests.e2e.load import ClosedLoop
from tests.e2e.serve_run import (
    RUNTIMES,
    ServeRun,
    app_config,
    fixed_replicas,
    wait_for_replica_processes,
    wait_for_replicas,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CLIENTS = 16
REPLICAS = 2
LOAD_BEFORE_KILL_S = 3.0
LOAD_AFTER_RECOVERY_S = 4.0
KILL_SAMPLES = 20  # HAProxy `show stat` reads just before the kill (~25 ms each)
REPLICA_HTTP_PORTS = range(30000, 31000)  # Ray's direct-ingress HTTP ports
ROWS = np.linspace(-1, 1, 2 * 16, dtype=np.float32).reshape(2, 16)
BODY = json_request(ROWS)


def haproxy_sessions(admin_socket: Path, port: int) -> int:
    """Current sessions (requests HAProxy has in flight) on the HTTP server at `port`."""
    with socket.socket(socket.AF_UNIX) as admin:
        admin.settimeout(5)
        admin.connect(str(admin_socket))
        admin.sendall(b"show stat\n")
        data = b""
        while chunk := admin.recv(65536):
            data += chunk
    rows = csv.DictReader(data.decode().lstrip("# ").splitlines())
    return sum(
        int(r["scur"]) for r in rows if r["pxname"].startswith("http-") and r["addr"].endswith(f":{port}")
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_replica_sigkill_loses_only_its_requests(
    runtime: str, ray_address: str, example_repository: Path, tmp_path: Path
) -> None:
    (expected,) = reference(example_repository, "linear", ROWS)

    def send(http: httpx.Client, _: int) -> str:
        response = http.post("/v2/models/linear/infer", json=BODY)
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:120]}"
        output = response.json()["outputs"][0]
        got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        return "" if np.allclose(got, expected, atol=1e-5) else "wrong result"

    config = app_config(
        {"model_repository": str(example_repository), "runtime": runtime}, fixed_replicas(REPLICAS)
    )
    env = config["controller_options"]["runtime_env"]["env_vars"]
    # Ray puts HAProxy's files in <the socket's directory>/<node id>/.
    admin_socket = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
    admin_socket = admin_socket / ray.get_runtime_context().get_node_id() / "admin.sock"
    with ServeRun(config, tmp_path, address=ray_address) as run:
        wait_for_replicas({"RUNNING": REPLICAS}, 120)
        before = wait_for_replica_processes(REPLICAS)
        first_ids = set(replicas_answering(run.url, REPLICAS))
        assert len(first_ids) == REPLICAS, "both replicas serve through HAProxy"
        victim, _ = min(before)
        (port,) = (p for _, p, _ in tcp_listeners({victim}) if p in REPLICA_HTTP_PORTS)

        with ClosedLoop(run.url, send, clients=CLIENTS) as load:
            time.sleep(LOAD_BEFORE_KILL_S)
            # Its share of the requests, sampled over the last half second: an instant's count
            # can miss the requests sent during the few ms between the sample and the kill.
            on_victim = max(haproxy_sessions(admin_socket, port) for _ in range(KILL_SAMPLES))
            in_flight, ok_at_kill = load.while_held(lambda: os.kill(victim, signal.SIGKILL))
            killed = time.monotonic()
            # Serve notices the death and starts a replacement (until then its controller still
            # reports the dead replica RUNNING), the replacement gets RUNNING, and it serves.
            after = wait_for_replica_processes(REPLICAS, exclude=before, timeout_s=150)
            wait_for_replicas({"RUNNING": REPLICAS}, 150)
            serving = replicas_answering(run.url, REPLICAS)
            restored = time.monotonic()
            recovered = load.counts()
            time.sleep(LOAD_AFTER_RECOVERY_S)
            final = load.counts()
        ok, failed = load.counts()
        wait_for_replicas({"RUNNING": REPLICAS}, 60)  # and stays so

    print(
        f"\n{runtime}: SIGKILL of replica pid {victim} with {on_victim} requests in flight on it "
        f"({in_flight} in all, {ok_at_kill} ok before); {failed} failed of {ok + failed}; 2 replicas "
        f"RUNNING and serving again {restored - killed:.1f} s after the kill (new pid "
        f"{sorted(p for p, _ in after - before)}); after that: {final[0] - recovered[0]} ok / "
        f"{final[1] - recovered[1]} failed"
    )
    for when, error in load.failures[:20]:
        print(f"  {when - killed:+.3f} s  {error}")
    assert 0 < on_victim <= CLIENTS and in_flight <= CLIENTS
    assert failed <= on_victim, f"more failures than requests on the killed replica: {load.failures[:20]}"
    assert final[1] == recovered[1], "requests failed after the replacement replica was up"
    assert final[0] > recovered[0], "no request succeeded after the recovery"
    assert len(serving) == REPLICAS and set(serving) - first_ids, f"the replacement does not serve: {serving}"
