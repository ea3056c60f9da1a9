"""One deployment, one Triton, measured: what deployment-wide model state costs.

`python -m benchmarks.model_state [--runtime triton]` serves the examples on 2 replicas with model
control and repository polling (1 s), then measures, through HAProxy's port:
- a load and an unload of `linear` until every replica applied it (median of `--rounds`);
- a statistics read (`GET /v2/models/linear/stats`, summed over replicas) against a health read
  on the same path (`GET /v2/health/ready`), medians of 200 each;
- a version roll under 8 closed-loop clients: version 2 written beside and renamed into place, the
  time until every replica serves it, and the requests that failed meanwhile.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import httpx

from benchmarks.cold_start import LINEAR_REQUEST
from devtools.processes import (
    wait_for,
)
from devtools.serve_configs import examples_workdir, replica_http_ports, runtime_arguments, serving, shipped

REPLICAS = 2


def app(repository: Path, runtime: str) -> dict:
    config = shipped("app.yaml")
    application = config["applications"][0]
    application["args"].update(
        model_repository=str(repository), runtime=runtime, model_control=True, repository_poll_s=1
    )
    application["deployments"][0].update(autoscaling_config=None, num_replicas=REPLICAS)
    return config


def median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1e3, 2)


def timed(call: object, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return times


def version_roll(url: str, repository: Path, ports: list[int]) -> dict[str, float]:
    failed, ok, stop = [], [0], threading.Event()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                response = http.post("/v2/models/linear/infer", json=LINEAR_REQUEST)
                if response.status_code == 200:
                    ok[0] += 1
                else:
                    failed.append(response.text)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    staged = repository / "linear" / ".2"
    shutil.copytree(repository / "linear" / "1", staged)
    started = time.monotonic()
    staged.rename(repository / "linear" / "2")

    def everywhere() -> bool:
        return all(
            httpx.get(f"http://127.0.0.1:{port}/v2/models/linear", timeout=30).json()["versions"] == ["2"]
            for port in ports
        )

    wait_for(everywhere, 60, "version 2 on every replica", period_s=0.05)
    rolled = time.monotonic() - started
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    return {"roll s": round(rolled, 2), "requests": ok[0] + len(failed), "failed": len(failed)}


def main() -> None:
    args = runtime_arguments(__doc__ or "", 10)
    workdir, repository = examples_workdir("serve_app-state-")
    config = app(repository, args.runtime)
    with serving(config, workdir) as (process, url):
        wait_for(lambda: len(replica_http_ports(process.pid)) == REPLICAS, 240, f"{REPLICAS} replicas")
        ports = replica_http_ports(process.pid)
        with httpx.Client(base_url=url, timeout=120) as http:
            wait_for(lambda: http.get("/v2/health/ready").status_code == 200, 60, "ready")
            cycles = []
            for _ in range(args.rounds):
                cycles += timed(
                    lambda: http.post("/v2/repository/models/linear/unload").raise_for_status(), 1
                )
                cycles += timed(lambda: http.post("/v2/repository/models/linear/load").raise_for_status(), 1)
            stats = timed(lambda: http.get("/v2/models/linear/stats").raise_for_status(), 200)
            health = timed(lambda: http.get("/v2/health/ready").raise_for_status(), 200)
        result = {
            "runtime": args.runtime,
            "replicas": REPLICAS,
            "load or unload applied on every replica, median ms": median_ms(cycles),
            "statistics read, median ms": median_ms(stats),
            "health read, median ms": median_ms(health),
            **version_roll(url, repository, ports),
        }
        print(json.dumps(result))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
