"""Placement benchmark: serverless per model (issue 22), one command, every contender, one run.

    python -m benchmarks.placement             # 100 models of 20-40 MiB, 60 s measured per contender
    python -m benchmarks.placement --quick     # the same, 20 s measured
    python -m benchmarks.placement --smoke     # 12 tiny models, seconds (the e2e smoke test)

A repository of `--models` models of `linear`'s contract whose files (and memory) are spread from
`--min-mib` to `--max-mib` (benchmarks.workloads.sized_repository, cached in the benchmark cache),
2 replicas (fixed) with room for `--room` models each (max_models_per_replica, and a
memory_budget_bytes that `--room` models of average measured size fit), closed-loop clients
(benchmarks.zipf_load) choosing models by Zipf (s = `--zipf`) for `--warmup` seconds, then
`--seconds` measured. Contenders (each its own `serve run`):

* `on_demand`: serve_app, configs/app.on_demand.yaml (HAProxy hashing each model's requests onto a
  consistent ring of the replicas, bounded load);
* `on_demand leastconn`: the same without RAY_SERVE_HAPROXY_BALANCE_ALGORITHM (Ray's leastconn);
* `Ray multiplexed`: Ray Serve's `@serve.multiplexed` on its documented path (stock proxy,
  `serve_multiplexed_model_id` header; benchmarks.baselines.multiplexed_app);
* `all resident`: serve_app `mode: all` on configs/app.yaml's request path (HAProxy leastconn),
  every model loaded on each replica: the hit path's reference (where memory allows).

Per contender: hit ratio (client side, from the `serve-app-model-load-s` header), loads per minute,
req/s, p50/p99 of hits and of misses, each miss's latency against its model's own load time (the
replicas' "loaded model 'x' in N s" log lines), replica RSS against the budget, failed requests,
and the oracle hit ratio (the share of requests that went to the 20 most requested models of the
trace actually sent). Results: benchmarks/results/placement.json and placement.md
(benchmarks.placement_report renders them again).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import placement_report
from benchmarks.contenders import (
    ON_DEMAND_CONFIG,
    multiplexed_application,
    placement_config,
    serve_app_config,
    triton_available,
)
from benchmarks.fetch import CACHE
from benchmarks.loadgen import Request
from benchmarks.placement_report import ALL_RESIDENT, LEASTCONN, MULTIPLEXED, ON_DEMAND
from benchmarks.results import loadavg, log, preset_parser
from benchmarks.servers import MODES, Mode, ServeProcess, make_workdir
from benchmarks.workloads import SIZED, kserve_binary, plain_json, sized_repository
from benchmarks.zipf_load import ClosedLoop, ZipfTrace, run_closed_loop
from devtools.processes import free_port, http_get, http_post, rss_bytes, wait_for

MIB = 2**20
RESULTS = Path(__file__).resolve().parent / "results"
REPLICAS = 2

CONTENDERS = (ON_DEMAND, LEASTCONN, MULTIPLEXED, ALL_RESIDENT)
RUNTIMES = ("triton", "torch")

_ON_DEMAND_ENV: dict[str, str] = yaml.safe_load(ON_DEMAND_CONFIG.read_text())["controller_options"][
    "runtime_env"
]["env_vars"]
BALANCE = "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"
PLACEMENT_MODES = {
    ON_DEMAND: Mode(
        "haproxy-hash", _ON_DEMAND_ENV, "proxy", "configs/app.on_demand.yaml's: HAProxy, hash of the model"
    ),
    LEASTCONN: Mode(
        "haproxy",
        {k: v for k, v in _ON_DEMAND_ENV.items() if k != BALANCE},
        "proxy",
        "configs/app.on_demand.yaml's without its balance line: HAProxy leastconn",
    ),
    MULTIPLEXED: MODES["stock"],
    ALL_RESIDENT: MODES["haproxy"],
}

# Presets: full (the benchmark), --quick, --smoke (tests/e2e/test_benchmark_smoke.py).
# 4 clients: on 2 cores the replicas' loads saturate the machine there (8 gave the same req/s at
# twice the latency; at 16 loads queue behind each other and most clients wait in misses).
FULL: dict[str, Any] = dict(
    models=100, min_mib=20.0, max_mib=40.0, room=10, clients=4, zipf=1.1, warmup=60.0, seconds=60.0,
    runtimes="triton,torch", contenders=",".join(CONTENDERS),
)  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {
    "full": FULL,
    "quick": {**FULL, "warmup": 20.0, "seconds": 20.0, "runtimes": "triton"},
    "smoke": {
        **FULL,
        **dict(models=12, min_mib=0.25, max_mib=0.5, room=3, clients=4, warmup=1.0, seconds=3.0),
        **dict(runtimes="torch", contenders=ON_DEMAND),
    },
}
# Memory the all-resident contender must leave free: Ray, the other helpers of the machine.
ALL_RESIDENT_HEADROOM = 4 * 2**30
LOAD_LINE = re.compile(r"pid=(\d+)[^)]*\).*loaded model '([^']+)' in ([\d.]+) s(?: \((\d+) bytes)?")
# A model's memory as a replica measures it, over its file's size: ~1.2 on average on this machine
# (most at 1.0, a tenth at 2-3x: the resident set moves with what else the replica does meanwhile).
# memory_budget_bytes = room x the average file x this: `room` average models fit.
MEASURED_OVER_FILE = 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = preset_parser(
        "benchmarks.placement",
        __doc__,
        quick="20 s measured, triton runtime only",
        smoke="12 tiny models, seconds, torch runtime",
    )
    parser.add_argument("--models", type=int, help="models in the repository")
    parser.add_argument("--min-mib", type=float, help="smallest model file (MiB)")
    parser.add_argument("--max-mib", type=float, help="largest model file (MiB)")
    parser.add_argument("--room", type=int, help="models a replica holds (max_models_per_replica)")
    parser.add_argument(
        "--budget-bytes",
        type=int,
        help="memory_budget_bytes (default: --room models of the average file size x MEASURED_OVER_FILE)",
    )
    parser.add_argument("--clients", type=int, help="closed-loop clients (connections)")
    parser.add_argument("--zipf", type=float, help="Zipf exponent s of the models' popularity")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds of load before the measured ones")
    parser.add_argument("--seconds", type=float, help="measured seconds per contender")
    parser.add_argument("--runtimes", help=f"comma list of {', '.join(RUNTIMES)} (serve_app's contenders)")
    parser.add_argument("--contenders", help=f"comma list of {', '.join(CONTENDERS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Zipf trace")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--tag", default="", help="suffix for result file names")
    parser.add_argument("--logs", type=Path, help="keep each contender's `serve run` log in this directory")
    args = parser.parse_args(argv)
    defaults = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.runtimes = args.runtimes.split(",")
    args.contenders = args.contenders.split(",")
    for given, known in ((args.runtimes, RUNTIMES), (args.contenders, CONTENDERS)):
        if set(given) - set(known):
            parser.error(f"unknown {sorted(set(given) - set(known))}: choose from {', '.join(known)}")
    return args


# --- one contender ---------------------------------------------------------------------------


@dataclass
class Replica:
    """One replica process: its direct-ingress HTTP port (serve_app) and what it used."""

    pid: int
    port: int | None
    rss_start: int = 0  # before the load, no model loaded (on_demand)
    # What models are measured against: the RSS after the replica's first load less that model
    # (the runtime's one-time costs: the backend's libraries); rss_start where not measured.
    rss_base: int = 0
    rss_peak: int = 0
    loaded_bytes_peak: int = 0
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)  # "start"/"end" → GET /v2's block

    def placement(self) -> dict[str, Any]:
        """This replica's GET /v2 `serve_app` block (straight to its own port)."""
        if self.port is None:
            return {}
        status, body = http_get(f"http://127.0.0.1:{self.port}/v2", timeout=30)
        return json.loads(body)["serve_app"] if status == 200 else {}


class Sampler(threading.Thread):
    """Each replica's peak RSS (and loaded_bytes, where it has GET /v2) while the load runs."""

    def __init__(self, replicas: list[Replica], period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.replicas = replicas
        self.period_s = period_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period_s):
            for replica in self.replicas:
                replica.rss_peak = max(replica.rss_peak, rss_bytes(replica.pid))
                if replica.port is not None:
                    loaded = replica.placement().get("loaded_bytes", 0)
                    replica.loaded_bytes_peak = max(replica.loaded_bytes_peak, loaded)


@dataclass
class Contender:
    name: str
    runtime: str  # serve_app's runtime; "-" for Ray multiplexed
    mode: Mode
    config: dict[str, Any]
    probe: str
    url_prefix: str  # route prefix of its requests
    budget: dict[str, Any]


def contender(
    args: argparse.Namespace, name: str, runtime: str, repository: Path, budget_bytes: int
) -> Contender:
    port = free_port()
    on_demand = {
        "mode": "on_demand",
        "max_models_per_replica": args.room,
        "memory_budget_bytes": budget_bytes,
        "idle_unload_s": 600,
    }
    if name == MULTIPLEXED:
        config = serve_app_config(port, repository, "torch")
        config["applications"] = [multiplexed_application(repository, args.room, REPLICAS)]
        budget = {"max_models_per_replica": args.room}
        return Contender(name, "-", PLACEMENT_MODES[name], config, "/mux/", "/mux", budget)
    placement = {"mode": "all"} if name == ALL_RESIDENT else on_demand
    config = placement_config(port, repository, runtime, placement, REPLICAS)
    budget = {} if name == ALL_RESIDENT else on_demand
    return Contender(name, runtime, PLACEMENT_MODES[name], config, "/v2/health/ready", "", budget)


def requests_for(item: Contender, models: list[str]) -> dict[str, Request]:
    """Each model's request: KServe binary for serve_app, the plain JSON body for Ray's."""
    if item.name == MULTIPLEXED:
        return {
            m: dataclasses.replace(
                plain_json(SIZED, item.url_prefix),
                headers={"Content-Type": "application/json", "serve_multiplexed_model_id": m},
            )
            for m in models
        }
    return {m: kserve_binary(dataclasses.replace(SIZED, name=m)) for m in models}


def measure(args: argparse.Namespace, item: Contender, sizes: dict[str, int]) -> dict[str, Any]:
    """Start `item`, load it for the warm-up and the measured seconds, stop it; what it measured."""
    models = list(sizes)
    workdir = make_workdir("bpl")
    # Every replica's "loaded model" line in `serve run`'s output: Ray folds repeated lines by default.
    process = ServeProcess(item.config, item.mode, workdir, item.probe, extra_env={"RAY_DEDUP_LOGS": "0"})
    label = f"{item.name} [{item.runtime}]"
    log(f"starting {label}")
    try:
        process.start(timeout_s=900 if item.name == ALL_RESIDENT else 240)
        wait_for(lambda: len(process.replica_http_ports()) == REPLICAS, 120, f"{REPLICAS} replicas")
        if item.mode.target == "proxy" and item.name != MULTIPLEXED:
            wait_for(lambda: all(process.replica_http_ports().values()), 120, "replicas' own ports")
        replicas = [Replica(pid, port) for pid, port in process.replica_http_ports().items()]
        requests = requests_for(item, models)
        for replica in replicas:
            replica.rss_start = replica.rss_base = replica.rss_peak = rss_bytes(replica.pid)
            if replica.port is not None and item.name != ALL_RESIDENT:
                first = requests[models[0]]
                http_post(f"http://127.0.0.1:{replica.port}{first.path}", first.body, first.headers, 60)
                replica.rss_base = rss_bytes(replica.pid) - sizes[models[0]]
        loop = ClosedLoop(
            "127.0.0.1",
            process.port,
            requests,
            ZipfTrace(models, args.zipf, args.seed),
            args.clients,
            b'"output',
        )
        window: dict[str, float] = {}
        mux_loads: dict[str, dict[str, int]] = {}

        def mark(phase: str) -> Any:
            async def snapshot() -> None:
                window[phase] = time.monotonic()
                mux_loads[phase] = dict(loop.replica_loads)
                for replica in replicas:
                    replica.counters[phase] = await asyncio.to_thread(replica.placement)
                log(f"{label}: {phase} of the measured {args.seconds:g} s (load {loadavg()[0]})")

            return snapshot

        sampler = Sampler(replicas)
        sampler.start()
        try:
            run_closed_loop(loop, [(args.warmup, mark("start")), (args.seconds, mark("end"))])
        finally:
            sampler.stopped.set()
            sampler.join()
        loaded = load_lines(process.log(tail=50_000_000))
        row = summarize(args, item, loop, window, replicas, mux_loads, loaded)
        measured = [b / sizes[m] for m, _, b in loaded if b is not None]
        row["measured_over_file"] = round(statistics.mean(measured), 2) if measured else None
        if item.name == ON_DEMAND:
            row["ring"] = ring_split(process.proxy_url, requests, replicas, row)
        return row
    except Exception as exc:  # noqa: BLE001 - one contender failing must not end the benchmark
        log(f"{label} FAILED: {exc}")
        return {
            "contender": item.name,
            "runtime": item.runtime,
            "error": f"{type(exc).__name__}: {str(exc)[-1500:]}",
        }
    finally:
        report = process.stop()
        log(f"stopped {label}: {report.seconds:.1f} s, leftovers {len(report.leftovers)}")
        if args.logs is not None and process.log_path.is_file():
            args.logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(
                process.log_path, args.logs / f"{item.name}-{item.runtime}{args.tag and '-' + args.tag}.log"
            )
        shutil.rmtree(workdir, ignore_errors=True)


def ring_split(
    url: str, requests: dict[str, Request], replicas: list[Replica], row: dict[str, Any]
) -> dict[str, Any]:
    """Where HAProxy's hash sends each model (one request each, one at a time, after the measured
    window: the replica whose counters move), and what that split allows: per replica, the share of
    its measured requests that went to its `room` most requested models (the oracle under this split)."""
    owner: dict[str, int] = {}
    for model, request in requests.items():
        before = {r.pid: _asked(r.placement()) for r in replicas}
        http_post(url + request.path, request.body, request.headers, timeout=60)
        after = {r.pid: _asked(r.placement()) for r in replicas}
        moved = [pid for pid in after if after[pid] > before[pid]]
        if len(moved) == 1:
            owner[model] = moved[0]
    sent: dict[str, int] = row["requests_by_model"]
    room = row["budget"]["max_models_per_replica"]
    split: dict[str, Any] = {"unmapped": sorted(set(requests) - set(owner))}
    held = 0
    for replica in replicas:
        mine = Counter({m: n for m, n in sent.items() if owner.get(m) == replica.pid})
        best = sum(n for _, n in mine.most_common(room))
        held += best
        split[str(replica.pid)] = {
            "requests_share": round(sum(mine.values()) / max(sum(sent.values()), 1), 3),
            "top_models_owned": sum(owner.get(m) == replica.pid for m in row["top_models"]),
            "oracle": round(best / max(sum(mine.values()), 1), 3),
        }
    split["oracle"] = round(held / max(sum(sent.values()), 1), 4)
    return split


def _asked(block: dict[str, Any]) -> int:
    return block.get("model_hits", 0) + block.get("model_misses", 0)


def load_lines(text: str) -> list[tuple[str, float, int | None]]:
    """(model, seconds, bytes measured) of each load, from the replicas' "loaded model 'x' in N s
    (B bytes)" lines (Ray multiplexed's say no bytes)."""
    return [(m[2], float(m[3]), int(m[4]) if m[4] else None) for m in LOAD_LINE.finditer(text)]


# --- what it measured --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def summarize(
    args: argparse.Namespace,
    item: Contender,
    loop: ClosedLoop,
    window: dict[str, float],
    replicas: list[Replica],
    mux_loads: dict[str, dict[str, int]],
    loaded: list[tuple[str, float, int | None]],
) -> dict[str, Any]:
    """The contender's row: hits, misses, loads, latencies, memory, the oracle, per replica."""
    seconds = window["end"] - window["start"]
    measured = [r for r in loop.records if window["start"] <= r.start < window["end"]]
    ok = [r for r in measured if r.status == 200 and not r.error]
    failed = [r for r in measured if r.status != 200 or r.error]
    hits = [r.latency for r in ok if r.load_s is None]
    misses = [r for r in ok if r.load_s is not None]
    sent = Counter(r.model for r in measured)
    # The oracle: the share of requests that went to the models the replicas hold together
    # (2 x 10: the 20 most requested), were placement perfect.
    top = [m for m, _ in sent.most_common(REPLICAS * args.room)]
    loads_by_model: dict[str, list[float]] = {}
    for model, load_s, _ in loaded:
        loads_by_model.setdefault(model, []).append(load_s)
    own_load = {m: statistics.median(v) for m, v in loads_by_model.items()}
    excess = [r.latency - own_load[r.model] for r in misses if r.model in own_load]
    queued = [r.load_s - own_load[r.model] for r in misses if r.model in own_load and r.load_s is not None]
    after = [r.latency - r.load_s for r in misses if r.load_s is not None]
    per_replica = [replica_row(replica, top) for replica in replicas]
    if item.name == MULTIPLEXED:
        start, end = mux_loads["start"], mux_loads["end"]
        loads = sum(n - start.get(r, 0) for r, n in end.items())
    else:
        loads = sum(row.get("loads", 0) for row in per_replica)
    all_loads = [load_s for _, load_s, _ in loaded]
    return {
        "contender": item.name,
        "runtime": item.runtime,
        "mode": item.mode.name,
        "budget": item.budget,
        "seconds": round(seconds, 2),
        "requests": len(measured),
        "failed": len(failed),
        "failures": Counter(f"{r.status} {r.error[:120]}" for r in failed).most_common(5),
        "req_s": round(len(ok) / seconds, 1),
        "hit_ratio": round(len(hits) / len(ok), 4) if ok else None,
        "oracle_hit_ratio": round(sum(sent[m] for m in top) / len(measured), 4) if measured else None,
        "loads": loads,
        "loads_per_min": round(loads / seconds * 60, 1),
        "hit_p50_ms": ms(percentile(hits, 50)),
        "hit_p99_ms": ms(percentile(hits, 99)),
        "miss_p50_ms": ms(percentile([r.latency for r in misses], 50)),
        "miss_p99_ms": ms(percentile([r.latency for r in misses], 99)),
        "misses": len(misses),
        "load_s_p50_ms": ms(percentile(all_loads, 50)),
        "load_s_p99_ms": ms(percentile(all_loads, 99)),
        "miss_minus_load_p50_ms": ms(percentile(excess, 50)),
        "miss_minus_load_p99_ms": ms(percentile(excess, 99)),
        "miss_minus_load_max_ms": ms(max(excess) if excess else None),
        "misses_over_load_plus_50ms": sum(e > 0.05 for e in excess),
        # Where a miss's time beyond its load goes: before and around it (room, queueing: the
        # header's wait less the load), and after it (the first inference, the response).
        "wait_minus_load_p50_ms": ms(percentile(queued, 50)),
        "wait_minus_load_p99_ms": ms(percentile(queued, 99)),
        "after_load_p50_ms": ms(percentile(after, 50)),
        "after_load_p99_ms": ms(percentile(after, 99)),
        "rss_start_mib": [round(r.rss_start / MIB) for r in replicas],
        "rss_base_mib": [round(r.rss_base / MIB) for r in replicas],
        "rss_peak_mib": [round(r.rss_peak / MIB) for r in replicas],
        "rss_growth_peak_mib": max(round((r.rss_peak - r.rss_base) / MIB) for r in replicas),
        "loaded_bytes_peak_mib": max(round(r.loaded_bytes_peak / MIB) for r in replicas),
        "top_models": top,
        "requests_by_model": dict(sent.most_common()),
        "per_replica": per_replica,
        "load1": loadavg()[0],
    }


def replica_row(replica: Replica, top: list[str]) -> dict[str, Any]:
    """What one replica's GET /v2 counters say of the measured window, and which of the `top`
    models it held at its end."""
    start, end = replica.counters.get("start", {}), replica.counters.get("end", {})
    row: dict[str, Any] = {"pid": replica.pid, "rss_peak_mib": round(replica.rss_peak / MIB)}
    if end:
        delta = {k: end.get(k, 0) - start.get(k, 0) for k in ("model_loads", "model_hits", "model_misses")}
        asked = delta["model_hits"] + delta["model_misses"]
        row.update(
            loads=delta["model_loads"],
            requests=asked,
            hit_ratio=round(delta["model_hits"] / asked, 4) if asked else None,
            loaded_models=len(end.get("loaded_models", [])),
            top_held=[m for m in top if m in end.get("loaded_models", [])],
        )
    return row


# --- the run -----------------------------------------------------------------------------------


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_before = loadavg()
    log(f"load average before: {load_before} on {os.cpu_count()} cores; {vars(args)}")
    cache = CACHE / "placement" / f"{args.models}x{args.min_mib:g}-{args.max_mib:g}MiB"
    log(f"repository: {args.models} models of {args.min_mib:g}-{args.max_mib:g} MiB in {cache}")
    sizes = sized_repository(cache, args.models, round(args.min_mib * MIB), round(args.max_mib * MIB))
    repository = cache / "repository"
    mean_size = sum(sizes.values()) / len(sizes)
    budget_bytes = args.budget_bytes or round(args.room * mean_size * MEASURED_OVER_FILE)
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    for runtime in args.runtimes:
        if runtime == "triton" and (why := triton_available()):
            notes.append(f"runtime triton skipped: {why}")
            continue
        for name in args.contenders:
            if name == MULTIPLEXED and runtime != args.runtimes[0]:
                continue  # runtime-independent: measured once
            if name == ALL_RESIDENT:
                needed = REPLICAS * sum(sizes.values()) + ALL_RESIDENT_HEADROOM
                if mem_available() < needed:
                    notes.append(
                        f"{name} [{runtime}] skipped: {mem_available() / 2**30:.1f} GiB available, "
                        f"{needed / 2**30:.1f} GiB needed"
                    )
                    continue
            rows.append(measure(args, contender(args, name, runtime, repository, budget_bytes), sizes))
    data = {
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "mem_total_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
            "load_avg_before": load_before,
            "load_avg_after": loadavg(),
        },
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "tag", "logs")},
            "replicas": REPLICAS,
            "memory_budget_bytes": budget_bytes,
            "oracle_top": REPLICAS * args.room,
        },
        "repository": {
            "models": len(sizes),
            "min_mib": round(min(sizes.values()) / MIB, 1),
            "max_mib": round(max(sizes.values()) / MIB, 1),
            "mean_mib": round(mean_size / MIB, 1),
            "total_gib": round(sum(sizes.values()) / 2**30, 2),
        },
        "rows": rows,
        "notes": notes,
    }
    text = placement_report.write(data, args.out, args.tag)
    print("\n" + text, flush=True)
    if any("error" in row for row in rows):
        sys.exit("a contender failed: see the report")


if __name__ == "__main__":
    main()
