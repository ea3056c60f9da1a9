"""Scale to zero and back: where the first response after idle spends its time.

`python -m benchmarks.cold_start [--runtime triton] [--rounds 3]` serves the examples with
configs/app.on_demand.yaml (min_replicas 0), waits until the last replica is gone, sends one
request, and splits its latency with what the new replica logged: its process's start to its
constructor (Ray's worker start and imports), the runtime's start, the model's load, and the
rest (Serve noticing the request, starting the replica, and routing to it).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from pathlib import Path

from devtools.processes import (
    http_post,
    wait_for,
)
from devtools.serve_configs import examples_workdir, replica_pids, runtime_arguments, serving, shipped

READY = re.compile(
    r"replica (\S+) ready: .*?; ([\d.]+) s after its process started \(its constructor at ([\d.]+) s, "
    r"the runtime's start ([\d.]+) s\)"
)
LINEAR_REQUEST = {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
LOADED = re.compile(r"loaded model 'linear' in ([\d.]+) s")


def config(repository: Path, runtime: str) -> dict:
    config = shipped("app.on_demand.yaml")
    app = config["applications"][0]
    app["args"].update(model_repository=str(repository), runtime=runtime)
    app["deployments"][0]["autoscaling_config"].update(
        min_replicas=0, initial_replicas=1, downscale_to_zero_delay_s=3, downscale_delay_s=3
    )
    return config


def main() -> None:
    args = runtime_arguments(__doc__ or "", 3)
    workdir, repository = examples_workdir("serve_app-cold-")
    served = config(repository, args.runtime)
    log = workdir / "serve.log"
    body = json.dumps(
        {"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    )
    rows = []
    with serving(served, workdir) as (process, url):
        wait_for(lambda: replica_pids(process.pid), 180, "the first replica")
        for _ in range(args.rounds):
            wait_for(lambda: not replica_pids(process.pid), 180, "scale to zero")
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
    print(f"serve run's log: {log}")
    medians = {key: statistics.median(r[key] for r in rows if key in r) for key in rows[0]}
    print("median:", json.dumps({k: round(v, 2) for k, v in medians.items()}))


if __name__ == "__main__":
    main()
