"""The contenders: their names, and the Serve configs the Ray ones run in.

* serve_app (torch runtime) and serve_app triton: configs/app.yaml as shipped, only the
  ports (HTTP and gRPC), repository and runtime swapped (plus --deployment overrides);
* plain Ray Serve and the no-op deployment (benchmarks.baselines);
* serve_app no Ray (benchmarks.noray) and standalone Triton (benchmarks.standalone) run as
  plain processes, outside Ray, in no request-path mode.

The placement benchmark (benchmarks.placement) runs configs/app.on_demand.yaml the same way
(`placement_config`) and Ray Serve's model multiplexing (`multiplexed_application`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

from benchmarks.servers import ROOT
from benchmarks.workloads import model_file
from devtools.processes import free_port

APP_CONFIG = ROOT / "configs" / "app.yaml"
ON_DEMAND_CONFIG = ROOT / "configs" / "app.on_demand.yaml"
SERVE_APP = "serve_app"
TRITON = "serve_app triton"
STANDALONE = "standalone Triton"
PLAIN = "plain Ray Serve"
NOOP = "no-op Ray Serve"
NORAY = "serve_app no Ray"
LIMIT = "in-process limit"
CEILING = "wrk ceiling"
RAY_CONTENDERS = (SERVE_APP, TRITON, PLAIN, NOOP)
ALL_CONTENDERS = (*RAY_CONTENDERS, NORAY, STANDALONE)
# Rows that serve serve_app's own code path (get the x standalone Triton ratio).
SERVE_APPS = (SERVE_APP, TRITON)
OURS = (*SERVE_APPS, NORAY)
# KServe v2 servers (requests are kserve_binary / kserve_json bodies).
KSERVE = (*OURS, STANDALONE)
TRITON_BASED = (TRITON, STANDALONE)
# Servers of Triton's gRPC API (inference.GRPCInferenceService): the gRPC rows' contenders.
GRPC_CONTENDERS = (*SERVE_APPS, STANDALONE)
STANDALONE_MODE = "standalone"  # the `mode` of standalone Triton's rows: its own HTTP/gRPC servers

PROBES = {
    SERVE_APP: "/v2/health/ready",
    TRITON: "/v2/health/ready",
    PLAIN: "/plain/ready",
    NOOP: "/noop/",
}
# Route prefixes when several serve_app variants share one cluster (--shared); alone, each takes "/".
SHARED_PREFIX = {SERVE_APP: "", TRITON: "/triton"}

# Serve's default max_ongoing_requests (5) makes the proxy back off and retry once 64 clients
# queue, which would cripple the baselines for a reason unrelated to what they measure: they get
# serve_app's value (configs/app.yaml: 64). num_cpus 0 only when they share a cluster (--shared).
BASELINE_MAX_ONGOING = 64


def serve_app_config(
    port: int,
    repository: Path,
    runtime: str,
    overrides: str = "{}",
    import_path: str | None = None,
    shipped: Path = APP_CONFIG,
) -> dict[str, Any]:
    """configs/app.yaml (or another `shipped` config) as shipped, with the ports, repository and
    runtime swapped.

    The gRPC ingress (grpc_options) stays on, on a free port of its own: its fixed 8001 would
    collide with the next run or another Serve instance on the machine.
    """
    config = yaml.safe_load(shipped.read_text())
    config["http_options"]["port"] = port
    if "grpc_options" in config:
        config["grpc_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"].update({"model_repository": str(repository), "runtime": runtime})
    if import_path:
        app["import_path"] = import_path
    changes = json.loads(overrides) if overrides else {}
    if "num_replicas" in changes:
        app["deployments"][0].pop("autoscaling_config", None)
    app["deployments"][0].update(changes)
    return config


def serve_app_deployment(overrides: str = "{}") -> dict[str, Any]:
    """serve_app's deployment as the benchmark runs it (the standalone Triton allotment mirrors it)."""
    return serve_app_config(0, Path("."), "triton", overrides)["applications"][0]["deployments"][0]


def _baseline_deployment(name: str, shared: bool, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """`settings` (default: Serve's, with serve_app's max_ongoing_requests) under `name`."""
    deployment: dict[str, Any] = {
        **(settings or {"max_ongoing_requests": BASELINE_MAX_ONGOING}),
        "name": name,
    }
    if shared:
        deployment["ray_actor_options"] = {"num_cpus": 0}
    return deployment


def plain_application(repository: Path, models: list[str], shared: bool) -> dict[str, Any]:
    return {
        "name": "plain",
        "route_prefix": "/plain",
        "import_path": "benchmarks.baselines:plain_app",
        "args": {"model_paths": {m: str(model_file(repository, m)) for m in models}},
        "deployments": [_baseline_deployment("PlainTorch", shared)],
    }


def noop_application(shared: bool, overrides: str = "{}") -> dict[str, Any]:
    """The no-op deployment in serve_app's deployment shape (replicas, autoscaling, CPUs, ongoing
    requests): Ray Serve's floor for what serve_app's deployment does on the same request path."""
    return {
        "name": "noop",
        "route_prefix": "/noop",
        "import_path": "benchmarks.baselines:noop_app",
        "args": {},
        "deployments": [_baseline_deployment("Noop", shared, serve_app_deployment(overrides))],
    }


def placement_config(
    port: int, repository: Path, runtime: str, placement: dict[str, Any], replicas: int
) -> dict[str, Any]:
    """configs/app.on_demand.yaml with `args.model_placement` = `placement` and `replicas` fixed
    replicas (no autoscaling)."""
    config = serve_app_config(
        port, repository, runtime, json.dumps({"num_replicas": replicas}), shipped=ON_DEMAND_CONFIG
    )
    config["applications"][0]["args"]["model_placement"] = placement
    return config


def multiplexed_application(repository: Path, room: int, replicas: int) -> dict[str, Any]:
    """Ray Serve's model multiplexing (benchmarks.baselines.multiplexed_app) holding `room` models
    per replica, on `replicas` replicas of serve_app's CPUs and max_ongoing_requests."""
    deployment = serve_app_deployment(json.dumps({"num_replicas": replicas}))
    return {
        "name": "mux",
        "route_prefix": "/mux",
        "import_path": "benchmarks.baselines:multiplexed_app",
        "args": {"repository": str(repository), "max_models_per_replica": room},
        "deployments": [
            _baseline_deployment(
                "MultiplexedTorch",
                shared=False,
                settings={
                    k: deployment[k] for k in ("num_replicas", "max_ongoing_requests", "ray_actor_options")
                },
            )
        ],
    }


def triton_available() -> str | None:
    """None if serve_app's Triton runtime can be tried, else why not."""
    if importlib.util.find_spec("tritonserver") is None:
        return "`import tritonserver` fails"
    if importlib.util.find_spec("serve_app.runtimes.triton") is None:
        return "serve_app.runtimes.triton does not exist yet"
    return None


def prefix(contender: str, group: list[str]) -> str:
    return SHARED_PREFIX.get(contender, "") if len(group) > 1 else ""


def app_name(contender: str, group: list[str]) -> str:
    """The Serve application a serve_app variant runs as in `group`'s config: what gRPC
    clients name in their `application` metadata (Serve routes gRPC by it, not by prefix)."""
    shipped = yaml.safe_load(APP_CONFIG.read_text())["applications"][0]["name"]
    route = prefix(contender, group)
    return f"{shipped}-{route.strip('/')}-variant" if route else shipped


def run_models(repository: Path) -> list[str]:
    return [m for m in ("mlp4096", "mlp1024", "tiny") if (repository / m).is_dir()]


def build_config(
    group: list[str], repository: Path, port: int, shared: bool, overrides: str = "{}"
) -> dict[str, Any]:
    """One Serve config holding the applications of `group` (one each, or all with --shared)."""
    config = serve_app_config(port, repository, "torch", overrides)
    template = config["applications"].pop()
    for contender in group:
        if contender in SERVE_APPS:
            app = json.loads(json.dumps(template))
            app["args"]["runtime"] = "triton" if contender == TRITON else "torch"
            app["name"] = app_name(contender, group)
            if prefix(contender, group):
                app["route_prefix"] = prefix(contender, group)
            config["applications"].append(app)
        elif contender == PLAIN:
            config["applications"].append(plain_application(repository, run_models(repository), shared))
        elif contender == NOOP:
            config["applications"].append(noop_application(shared, overrides))
    return config
