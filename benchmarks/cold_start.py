"""Scale to zero and back: where the first response after idle spends its time.

`python -m benchmarks.cold_start [--runtime triton] [--rounds 3]` serves the examples with
configs/app.on_demand.yaml (min_replicas 0), waits until the last replica is gone, sends one
request, and splits its latency with what the new replica logged: its process's start to its
constructor (Ray's worker start and imports), the runtime's start, the model's load, and the
rest (Serve noticing the request, starting the replica, and routing to it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from devtools.processes import (
    command_line,
    descendants,
    free_port,
    http_post,
    interrupt_group,
    spawn,
    wait_for,
)
from serve_app.examples import build_example_repository

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(
    r"replica (\S+) ready: .*?; ([\d.]+) s after its process started \(its constructor at ([\d.]+) s, "
    r"the runtime's start ([\d.]+) s\)"
)
LOADED = re.compile(r"loaded model 'linear' in ([\d.]+) s")


def config(repository: Path, runtime: str) -> dict:
    config = yaml.safe_load((ROOT / "configs" / "app.on_demand.yaml").read_text())
    config["http_options"]["port"] = free_port()
    config["grpc_options"]["port"] = free_port()
    env_vars = config["controller_options"]["runtime_env"]["env_vars"]
    for name in (
        "HAPROXY_STATS_PORT",
        "HAPROXY_METRICS_PORT",
        "FALLBACK_PROXY_HTTP_PORT",
        "FALLBACK_PROXY_GRPC_PORT",
    ):
        env_vars[f"RAY_SERVE_{name}"] = str(free_port())
    app = config["applications"][0]
    app["args"].update(model_repository=str(repository), runtime=runtime)
    app["deployments"][0]["autoscaling_config"].update(
        min_replicas=0, initial_replicas=1, downscale_to_zero_delay_s=3, downscale_delay_s=3
    )
    return config


def replicas(root: int) -> list[int]:
    return [pid for pid, _ in descendants(root) if command_line(pid).startswith("ray::ServeReplica")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="triton", choices=["triton", "torch"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="serve_app-cold-"))
    repository = workdir / "repository"
    build_example_repository(repository)
    path = workdir / "app.yaml"
    served = config(repository, args.runtime)
    path.write_text(yaml.safe_dump(served))
    url = f"http://127.0.0.1:{served['http_options']['port']}"
    log = workdir / "serve.log"
    process = spawn([str(Path(sys.executable).with_name("serve")), "run", str(path)], log, cwd=workdir)
    body = json.dumps(
        {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    )
    rows = []
    try:
        wait_for(lambda: replicas(process.pid), 180, "the first replica")
        for _ in range(args.rounds):
            wait_for(lambda: not replicas(process.pid), 180, "scale to zero")
            time.sleep(1)
            seen = log.read_text(errors="replace")
            started = time.monotonic()
            status, answer = http_post(url + "/v2/models/linear/infer", body.encode(), {}, timeout=120)
            total = time.monotonic() - started
            assert status == 200, answer
            time.sleep(2)  # the replica's log reaches `serve run`'s output through Ray's log monitor
            new = log.read_text(errors="replace")[len(seen) :]
            ready, loaded = READY.search(new), LOADED.search(new)
            row = {"first response s": round(total, 2)}
            if ready:
                age, constructor, runtime = (float(v) for v in ready.groups()[1:])
                row.update(
                    {
                        "process start → constructor s": round(constructor, 2),
                        "runtime start s": round(runtime, 2),
                        "constructor total s": round(age - constructor, 2),
                    }
                )
            if loaded:
                row["model load s"] = float(loaded.group(1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        interrupt_group(process, 60)
        print(f"serve run's log: {log}")
    medians = {key: statistics.median(r[key] for r in rows if key in r) for key in rows[0]}
    print("median:", json.dumps({k: round(v, 2) for k, v in medians.items()}))


if __name__ == "__main__":
    main()
