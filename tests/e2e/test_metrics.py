"""Triton's metrics from two replicas, through Ray's metrics agent, scraped by a real Prometheus.

Prometheus (`/usr/bin/prometheus`, Debian's package) runs as a child of this module with a
temporary TSDB, scraping the session cluster's metrics export port every second through a
service-discovery file in the format Ray writes (`prom_metrics_service_discovery.json`). The
app runs two replicas with `metrics.interval_s: 1` and Ray's worker metrics report interval at
1 s (`RAY_metrics_report_interval_ms`, 10 s by default); known traffic goes to two models, and
the sums over replicas, read back through Prometheus's query API, must equal what was sent.
Every PromQL expression of the shipped Grafana dashboard must parse and return data there.

The torch app runs on-demand placement with room for one model per replica (so the two models
evict each other, and idle out after the traffic): its placement series (`ray_serve_app_*`) must
add up, and its Triton series still equal what was sent (the cache hands a model's statistics to
the metrics before it unloads it). The triton app runs `mode: all`, which exports no placement
series. One app per runtime covers both modes without a third `serve run`.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import yaml

from devtools.processes import answers, free_port, http_get, start_process, stop_process, wait_for
from tests.e2e.checks import json_request, linear_body, replicas_answering
from tests.e2e.serve_run import ROOT, ServeRun, app_config, fixed_replicas

PROMETHEUS = Path("/usr/bin/prometheus")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not PROMETHEUS.exists(), reason="no Prometheus (apt-get install prometheus)"),
]

DASHBOARD = ROOT / "configs" / "grafana-dashboard.json"
MODELS = ("linear_a", "linear_b")
GOOD = {"linear_a": 30, "linear_b": 20}  # successful requests (batch of 2 each)
BAD = {"linear_a": 4, "linear_b": 3}  # wrong shape: refused before the runtime (REJECTED)
WAIT_S = 60.0
SUCCESS = "ray_nv_inference_request_success_total"
TOP_UPS = 5  # bursts at most before "one replica never serves" is the test's failure
ON_DEMAND_RUNTIME = "torch"  # the other runtime's app runs mode all
BUDGET_BYTES = 2**30
PLACEMENT = {
    "mode": "on_demand",
    "max_models_per_replica": 1,
    "memory_budget_bytes": BUDGET_BYTES,
    "idle_unload_s": 3,
}


class Prometheus:
    """`prometheus` with a generated config and a temporary TSDB; stopped by PID."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        # What Ray's dashboard writes to <session>/prom_metrics_service_discovery.json.
        discovery = workdir / "prom_metrics_service_discovery.json"
        discovery.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [str(discovery)]}]}],
        }))  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> Prometheus:
        command = [
            str(PROMETHEUS),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        ready = functools.partial(answers, f"{self.url}/-/ready")
        self.process = start_process(command, self.log_path, ready, "prometheus", timeout_s)
        return self

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; raises with Prometheus's error when the expression does not parse."""
        status, body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def sum_by(self, label: str, metric: str, app: str) -> dict[str, float]:
        """`metric` of application `app` summed by `label` (over replicas, versions, ...)."""
        rows = self.query(f'sum by ({label}) ({metric}{{application="{app}"}})')
        return {row["metric"].get(label, ""): float(row["value"][1]) for row in rows}

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture(scope="module")
def prometheus(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Scraping every node's metrics export port (where Ray's metrics agent serves all its workers)."""
    targets = [f"127.0.0.1:{node['MetricsExportPort']}" for node in ray.nodes() if node["Alive"]]
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), targets).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served_config(runtime: str, example_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two replicas of an app of its own name, serving two copies of `linear` (on demand, for
    ON_DEMAND_RUNTIME)."""
    repository = tmp_path_factory.mktemp("metrics-repository")
    for model in MODELS:
        shutil.copytree(example_repository / "linear", repository / model)
    args = {"model_repository": str(repository), "runtime": runtime, "metrics": {"interval_s": 1}}
    if runtime == ON_DEMAND_RUNTIME:
        args["model_placement"] = PLACEMENT
    config = app_config(args, fixed_replicas(2))
    config["applications"][0]["name"] = f"metrics_{runtime}"
    # Read by the controller, passed on to the replicas it starts: report to the agent every second.
    config["controller_options"]["runtime_env"]["env_vars"]["RAY_metrics_report_interval_ms"] = "1000"
    return config


@dataclass(frozen=True)
class Traffic:
    app: str
    good: dict[str, int]  # successful requests per model (batch of 2 each)
    bad: dict[str, int]  # refused requests per model
    on_demand: bool


@pytest.fixture(scope="module")
def traffic(served: ServeRun, prometheus: Prometheus) -> Traffic:
    """GOOD and BAD requests to the app (and, if one replica got all of them, a few more until
    both served: see `_top_up`)."""
    # Both replicas answer through HAProxy (ready ≠ already in its backend).
    assert len(replicas_answering(served.url, 2, WAIT_S)) == 2, "not both replicas answer"
    app = served.config["applications"][0]
    traffic = Traffic(app["name"], dict(GOOD), dict(BAD), "model_placement" in app["args"])
    send_traffic(served.url, traffic.good, traffic.bad)
    _top_up(served.url, prometheus, traffic)
    return traffic


def _top_up(url: str, prometheus: Prometheus, traffic: Traffic) -> None:
    """HAProxy's leastconn may give every request of a short burst to one replica (each ends
    before the next begins): add bursts of concurrent requests, counted, until both served."""
    for _ in range(TOP_UPS):
        wait_counted(prometheus, traffic)
        if len(prometheus.sum_by("replica", SUCCESS, traffic.app)) >= 2:
            return
        burst = {MODELS[0]: 16}
        send_traffic(url, burst, {}, clients=8)
        traffic.good[MODELS[0]] += burst[MODELS[0]]


def wait_counted(prometheus: Prometheus, traffic: Traffic) -> None:
    """Until the successes and failures per model Prometheus has are the traffic sent."""

    def counts() -> tuple[dict[str, float], dict[str, float]]:
        success = prometheus.sum_by("model", SUCCESS, traffic.app)
        return success, prometheus.sum_by("model", "ray_nv_inference_request_failure_total", traffic.app)

    sent = (traffic.good, traffic.bad)
    wait_for(lambda: counts() == sent, WAIT_S, lambda: f"the traffic {sent} counted (have {counts()})", 0.5)


def send_traffic(url: str, good_counts: dict[str, int], bad_counts: dict[str, int], clients: int = 4) -> None:
    """Good and bad requests per model, `clients` at a time."""
    good, _ = linear_body(batch=2)
    bad = json_request(np.zeros((1, 15), np.float32))
    calls = [(m, good, 200) for m, n in good_counts.items() for _ in range(n)]
    calls += [(m, bad, 400) for m, n in bad_counts.items() for _ in range(n)]
    with httpx.Client(base_url=url, timeout=60) as http, ThreadPoolExecutor(clients) as pool:

        def call(model: str, body: dict[str, Any], status: int) -> None:
            response = http.post(f"/v2/models/{model}/infer", json=body)
            assert response.status_code == status, response.text

        list(pool.map(lambda c: call(*c), calls))


def test_traffic_sums_over_replicas(traffic: Traffic, prometheus: Prometheus) -> None:
    app = traffic.app
    wait_counted(prometheus, traffic)
    assert set(prometheus.sum_by("reason", "ray_nv_inference_request_failure_total", app)) == {"REJECTED"}
    inferences = prometheus.sum_by("model", "ray_nv_inference_count_total", app)
    assert inferences == {m: 2 * n for m, n in traffic.good.items()}  # batch of 2 each
    assert prometheus.sum_by("model", "ray_nv_inference_request_histogram_ms_count", app) == traffic.good
    for name in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
        durations = prometheus.sum_by("model", f"ray_nv_inference_{name}_duration_us_total", app)
        assert set(durations) == set(MODELS) and all(v > 0 for v in durations.values()), (name, durations)
    replicas = prometheus.sum_by("replica", SUCCESS, app)
    assert len(replicas) == 2, f"expected both replicas to have served: {replicas}"
    print(f"\nsuccesses by replica ({app}): {replicas}; requests per model {traffic.good}")
    print_scrape(prometheus, app, MODELS[0])


def test_placement_series_add_up_on_demand_and_mode_all_has_none(
    traffic: Traffic, prometheus: Prometheus
) -> None:
    app = traffic.app
    if not traffic.on_demand:
        assert prometheus.query(f'{{__name__=~"ray_serve_app_.+", application="{app}"}}') == []
        return

    def per_replica(metric: str) -> dict[str, float]:
        return prometheus.sum_by("replica", metric, app)

    def idled_out() -> bool:
        """Every model loaded was unloaded again (evicted, or idle after the traffic)."""
        loaded = per_replica("ray_serve_app_loaded_models")
        loads, unloads = (per_replica(f"ray_serve_app_model_{n}_total") for n in ("loads", "unloads"))
        return bool(loaded) and not any(loaded.values()) and loads == unloads

    loaded_now = functools.partial(per_replica, "ray_serve_app_loaded_models")
    wait_for(idled_out, WAIT_S, lambda: f"every model unloaded (loaded now: {loaded_now()})", 0.5)
    requests = prometheus.sum_by("result", "ray_serve_app_cache_requests_total", app)
    loads = sum(per_replica("ray_serve_app_model_loads_total").values())
    assert sum(requests.values()) == sum(traffic.good.values()) + sum(traffic.bad.values())
    assert len(MODELS) <= loads <= requests["miss"]  # a miss loads its model or waits for that load
    assert sum(per_replica("ray_serve_app_model_load_duration_seconds_count").values()) == loads
    assert "idle" in prometheus.sum_by("reason", "ray_serve_app_model_unloads_total", app)
    replicas = set(per_replica(SUCCESS))
    assert per_replica("ray_serve_app_max_models_per_replica") == dict.fromkeys(replicas, 1)
    assert per_replica("ray_serve_app_memory_budget_bytes") == dict.fromkeys(replicas, BUDGET_BYTES)
    print(f"\ncache requests {requests}, loads {loads}")


def print_scrape(prometheus: Prometheus, app: str, model: str) -> None:
    """One replica's series for one model, as the metrics agent exports them (for the record)."""
    text = http_get(f"http://{prometheus.targets[0]}/metrics")[1].decode()
    lines = [line for line in text.splitlines() if f'model="{model}"' in line and f'"{app}"' in line]
    replica = re.search(r'replica="([^"]+)"', lines[0]).group(1)  # type: ignore[union-attr]
    print("\n".join(line for line in lines if f'replica="{replica}"' in line))


def dashboard_expressions() -> list[str]:
    """Every target expression of the dashboard, panels nested in rows included."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    panels += [inner for panel in panels for inner in panel.get("panels", [])]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_dashboard_queries_parse_and_return_data(traffic: Traffic, prometheus: Prometheus) -> None:
    """After the traffic: `$application` is the app, `$model` all models; GPU panels need a GPU,
    on-demand placement's an app that runs it."""
    variables = {"$application": traffic.app, "$model": ".*", "$__rate_interval": "1m"}
    expressions = dashboard_expressions()
    assert expressions
    checked = []
    for expr in expressions:
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"unsubstituted variable in {expr}"
        if "nv_gpu_" in expr:
            prometheus.query(expr)  # parses; no GPU here, so no data
            continue
        if "ray_serve_app_" in expr and not traffic.on_demand:
            assert prometheus.query(expr) == [], f"{expr}: placement series from an app in mode all"
            continue
        checked.append(expr)
    for expr in checked:
        wait_for(lambda expr=expr: prometheus.query(expr), WAIT_S, f"data for {expr}", 0.5)
